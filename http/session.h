// Internal to http/: one client connection on Boost.Beast. Only
// http_server.cc and session.cc include this header (Asio is slow to compile).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

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
  // Set before Start() when the server speaks TLS; read-only afterwards.
  std::unique_ptr<boost::asio::ssl::context> tls;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> rejected_connections{0};

  absl::Mutex mu;
  // Open connections, so Stop() can reach them; a connection removes itself
  // when it closes.
  absl::flat_hash_map<uint64_t, std::weak_ptr<Session>> sessions ABSL_GUARDED_BY(mu);
  uint64_t next_session_id ABSL_GUARDED_BY(mu) = 1;
};

// One client connection: reads requests, dispatches them, writes replies;
// everything runs on the socket's strand. One request is answered at a time
// (HTTP/1.1 order). Plain TCP or TLS underneath (session.cc holds both).
class Session : public ExchangeSink, public std::enable_shared_from_this<Session> {
 public:
  ~Session() override = default;

  virtual uint64_t id() const = 0;
  // Any thread: start serving (after the TLS handshake, for TLS); the server
  // stops (idle connections close, the others stop keep-alive); close now,
  // cancelling the reply in flight.
  virtual void Start() = 0;
  virtual void OnServerStopping() = 0;
  virtual void Abort(absl::Status reason) = 0;
};

// `socket` must be bound to a strand; `core` outlives every running session.
std::shared_ptr<Session> MakePlainSession(ServerCore* core, uint64_t id,
                                          boost::asio::ip::tcp::socket socket);
// Speaks TLS with `core->tls` (which must be set).
std::shared_ptr<Session> MakeTlsSession(ServerCore* core, uint64_t id,
                                        boost::asio::ip::tcp::socket socket);

}  // namespace pdserve::http::internal
