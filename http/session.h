// Internal to http/: one client connection on Boost.Beast. Only
// http_server.cc and session.cc include this header (Beast is slow to compile).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "http/exchange.h"
#include "http/http_server.h"
#include "http/route_table.h"

namespace pdserve::http::internal {

class Session;

// State shared by the server and its connections.
struct ServerCore {
  explicit ServerCore(HttpServerOptions server_options) : options(std::move(server_options)) {}

  const HttpServerOptions options;
  RouteTable routes;  // Read-only once started.
  std::atomic<bool> stopping{false};

  absl::Mutex mu;
  // Open connections, so Stop() can reach them; a connection removes itself
  // when it closes.
  absl::flat_hash_map<uint64_t, std::weak_ptr<Session>> sessions ABSL_GUARDED_BY(mu);
  uint64_t next_session_id ABSL_GUARDED_BY(mu) = 1;
};

// Reads requests, dispatches them, writes replies; everything runs on the
// socket's strand. One request is answered at a time (HTTP/1.1 order).
class Session final : public ExchangeSink, public std::enable_shared_from_this<Session> {
 public:
  // `socket` must be bound to a strand; `core` outlives every running session.
  Session(ServerCore* core, uint64_t id, boost::asio::ip::tcp::socket socket);
  ~Session() override;

  uint64_t id() const { return id_; }

  // Any thread: start serving; the server stops (idle connections close, the
  // others stop keep-alive); close now, cancelling the reply in flight.
  void Start();
  void OnServerStopping();
  void Abort(absl::Status reason);

  // ExchangeSink.
  void PostResponse(HttpResponse response) override;
  void PostStreamHead(HttpStreamHead head) override;
  void PostFlush() override;
  void PostCancel(absl::Status reason, std::function<void()> callback) override;

 private:
  enum class Phase { kIdle, kReading, kExchange, kLingering, kClosed };
  using Timer = boost::asio::steady_timer;

  // Waits for the first byte of a request, or watches the socket while a
  // reply is in flight (a client that disconnects shows up here).
  void ReadSome();
  void OnReadSome(boost::system::error_code ec, size_t n_bytes);
  void ReadHeader();
  void OnHeader(boost::system::error_code ec);
  void ReadBody();
  void OnBody(boost::system::error_code ec);
  void OnReadError(boost::system::error_code ec);
  void Dispatch();

  void WriteResponse(HttpResponse response);
  void WriteStreamHead(HttpStreamHead head);
  void FlushStream();
  void OnStreamWritten(boost::system::error_code ec, bool last);
  void FinishExchange();

  // Answers a request we could not parse, then closes.
  void Reject(int status, std::string message);
  // Sends FIN and discards input for a while before closing, so the client
  // reads our final response instead of a reset.
  void LingeringClose();
  void Close(absl::Status reason);

  void ArmTimer(Timer& timer, uint64_t& generation, absl::Duration timeout);
  void CancelTimer(Timer& timer, uint64_t& generation);

  ServerCore* const core_;
  const uint64_t id_;
  boost::asio::ip::tcp::socket socket_;
  std::string remote_address_;
  Timer read_timer_;
  Timer write_timer_;
  // Bumped on every arm/cancel so a stale expiry that raced a cancel is ignored.
  uint64_t read_timer_generation_ = 0;
  uint64_t write_timer_generation_ = 0;

  Phase phase_ = Phase::kIdle;
  bool read_in_flight_ = false;
  bool write_in_flight_ = false;
  bool keep_alive_ = true;
  size_t lingering_bytes_ = 0;

  boost::beast::flat_buffer buffer_;
  std::optional<boost::beast::http::request_parser<boost::beast::http::string_body>> parser_;
  int version_ = 11;

  std::shared_ptr<Exchange> exchange_;
  // Alive while written: a whole response, or a stream's head and the bytes
  // of the chunk being written.
  std::unique_ptr<boost::beast::http::response<boost::beast::http::string_body>> response_;
  std::unique_ptr<boost::beast::http::response<boost::beast::http::empty_body>> stream_head_;
  std::unique_ptr<boost::beast::http::response_serializer<boost::beast::http::empty_body>>
      stream_serializer_;
  bool head_sent_ = false;
  bool chunked_ = true;
  std::string stream_bytes_;
};

}  // namespace pdserve::http::internal
