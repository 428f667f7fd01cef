#include "http/session.h"

#include <algorithm>
#include <exception>
#include <utility>

#include <type_traits>

#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_cat.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "http/request_parser.h"

namespace pdserve::http::internal {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using boost::system::error_code;

constexpr size_t kReadChunkBytes = 4096;
// A client that keeps sending while we close gets cut off after this much.
constexpr size_t kMaxLingeringBytes = 1 << 20;
constexpr absl::Duration kMaxLingering = absl::Seconds(2);
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

// Header names are tokens; values may not hold CR, LF or NUL (they would let a
// handler's data inject headers).
bool IsValidHeader(std::string_view name, std::string_view value) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) &&
        std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos) {
      return false;
    }
  }
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

template <typename Message>
void SetHeaders(Message& message, int status, const std::string& content_type,
                const HeaderList& headers) {
  if (status < 100 || status > 999) {
    PDS_LOG(ERROR) << "http: handler returned status " << status << "; sending 500";
    status = 500;
  }
  message.result(static_cast<unsigned>(status));
  message.set(bhttp::field::server, "pdserve");
  if (!content_type.empty() && IsValidHeader("Content-Type", content_type)) {
    message.set(bhttp::field::content_type, content_type);
  }
  for (const auto& [name, value] : headers) {
    if (!IsValidHeader(name, value)) {
      PDS_LOG(ERROR) << "http: dropping invalid response header '" << absl::CEscape(name) << "'";
      continue;
    }
    message.insert(name, value);
  }
}

absl::string_view View(beast::string_view text) { return {text.data(), text.size()}; }

bool IsParseError(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category();
}

}  // namespace

// Session over `Stream`: a tcp::socket, or an ssl::stream over one.
template <class Stream>
class StreamSession final : public Session {
 public:
  // `stream_args` construct the stream from a socket bound to a strand;
  // `core` outlives every running session.
  template <class... Args>
  StreamSession(ServerCore* core, uint64_t id, Args&&... stream_args);

  uint64_t id() const override { return id_; }

  // Any thread: start serving; the server stops (idle connections close, the
  // others stop keep-alive); close now, cancelling the reply in flight.
  void Start() override;
  void OnServerStopping() override;
  void Abort(absl::Status reason) override;

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
  RequestLimits Limits() const {
    return {core_->options.max_body_bytes, core_->options.max_header_bytes,
            core_->options.max_header_fields};
  }
  void CancelTimer(Timer& timer, uint64_t& generation);

  ServerCore* const core_;
  const uint64_t id_;
  static constexpr bool kTls = !std::is_same_v<Stream, boost::asio::ip::tcp::socket>;
  std::shared_ptr<StreamSession> Self() {
    return std::static_pointer_cast<StreamSession>(shared_from_this());
  }
  boost::asio::ip::tcp::socket& socket() { return boost::beast::get_lowest_layer(stream_); }
  void ServeRequests();  // after the TLS handshake, if any

  Stream stream_;
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
  absl::Time request_started_;  // first byte of the request being read
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

template <class Stream>
template <class... Args>
StreamSession<Stream>::StreamSession(ServerCore* core, uint64_t id, Args&&... stream_args)
    : core_(core),
      id_(id),
      stream_(std::forward<Args>(stream_args)...),
      read_timer_(socket().get_executor()),
      write_timer_(socket().get_executor()) {
  error_code ec;
  const auto endpoint = socket().remote_endpoint(ec);
  if (!ec) remote_address_ = absl::StrCat(endpoint.address().to_string(), ":", endpoint.port());
}

template <class Stream>
void StreamSession<Stream>::Start() {
  net::post(socket().get_executor(), [self = Self()] {
    if (self->phase_ == Phase::kClosed) return;
    if constexpr (kTls) {
      // The handshake counts as reading a request's header: a peer that
      // stalls in it is cut off after header_timeout.
      self->phase_ = Phase::kReading;
      self->ArmTimer(
          self->read_timer_, self->read_timer_generation_,
          std::min(self->core_->options.header_timeout, self->core_->options.read_timeout));
      self->read_in_flight_ = true;
      self->stream_.async_handshake(net::ssl::stream_base::server, [self](error_code ec) {
        self->read_in_flight_ = false;
        if (self->phase_ == Phase::kClosed) return;
        if (ec) {
          PDS_LOG(DEBUG) << "http: TLS handshake with " << self->remote_address_
                         << " failed: " << ec.message();
          self->Close(absl::OkStatus());
          return;
        }
        self->ServeRequests();
      });
    } else {
      self->ServeRequests();
    }
  });
}

template <class Stream>
void StreamSession<Stream>::ServeRequests() {
  phase_ = Phase::kIdle;
  ArmTimer(read_timer_, read_timer_generation_, core_->options.idle_timeout);
  ReadSome();
}

template <class Stream>
void StreamSession<Stream>::OnServerStopping() {
  net::post(socket().get_executor(), [self = Self()] {
    self->keep_alive_ = false;
    if (self->phase_ == Phase::kIdle) self->Close(absl::OkStatus());
  });
}

template <class Stream>
void StreamSession<Stream>::Abort(absl::Status reason) {
  net::post(socket().get_executor(),
            [self = Self(), reason = std::move(reason)] { self->Close(reason); });
}

template <class Stream>
void StreamSession<Stream>::PostResponse(HttpResponse response) {
  net::post(socket().get_executor(), [self = Self(), response = std::move(response)]() mutable {
    self->WriteResponse(std::move(response));
  });
}

template <class Stream>
void StreamSession<Stream>::PostStreamHead(HttpStreamHead head) {
  net::post(socket().get_executor(), [self = Self(), head = std::move(head)]() mutable {
    self->WriteStreamHead(std::move(head));
  });
}

template <class Stream>
void StreamSession<Stream>::PostFlush() {
  net::post(socket().get_executor(), [self = Self()] { self->FlushStream(); });
}

template <class Stream>
void StreamSession<Stream>::PostCancel(absl::Status reason, std::function<void()> callback) {
  net::post(socket().get_executor(),
            [self = Self(), reason = std::move(reason), callback = std::move(callback)] {
              self->Close(reason);
              if (callback) callback();
            });
}

template <class Stream>
void StreamSession<Stream>::ReadSome() {
  read_in_flight_ = true;
  stream_.async_read_some(buffer_.prepare(kReadChunkBytes),
                          [self = Self()](error_code ec, size_t n) { self->OnReadSome(ec, n); });
}

template <class Stream>
void StreamSession<Stream>::OnReadSome(error_code ec, size_t n_bytes) {
  read_in_flight_ = false;
  if (phase_ == Phase::kClosed) return;
  if (phase_ == Phase::kLingering) {
    lingering_bytes_ += n_bytes;
    if (ec || lingering_bytes_ > kMaxLingeringBytes) {
      Close(absl::OkStatus());
    } else {
      ReadSome();
    }
    return;
  }
  if (ec) {
    // EOF or reset: while a reply is in flight this is the client leaving
    // (a half-close counts too, as in nginx).
    Close(exchange_ ? absl::CancelledError(absl::StrCat("client disconnected: ", ec.message()))
                    : absl::OkStatus());
    return;
  }
  buffer_.commit(n_bytes);
  // Bytes of a pipelined request wait until the current reply completes. We
  // stop watching then: a disconnect still shows up as a failed write.
  if (phase_ == Phase::kExchange) return;
  ReadHeader();
}

template <class Stream>
void StreamSession<Stream>::ReadHeader() {
  phase_ = Phase::kReading;
  parser_.emplace();
  parser_->header_limit(core_->options.max_header_bytes);
  parser_->body_limit(core_->options.max_body_bytes);
  request_started_ = absl::Now();
  ArmTimer(read_timer_, read_timer_generation_,
           std::min(core_->options.header_timeout, core_->options.read_timeout));
  read_in_flight_ = true;
  bhttp::async_read_header(stream_, buffer_, *parser_,
                           [self = Self()](error_code ec, size_t) { self->OnHeader(ec); });
}

template <class Stream>
void StreamSession<Stream>::OnHeader(error_code ec) {
  read_in_flight_ = false;
  if (phase_ == Phase::kClosed) return;
  if (ec) {
    OnReadError(ec);
    return;
  }
  const auto& header = parser_->get();
  if (std::optional<RequestError> e = CheckHeaderFields(
          static_cast<size_t>(std::distance(header.begin(), header.end())), Limits())) {
    Reject(e->status, std::move(e->message));
    return;
  }
  if (!parser_->is_done()) {
    // The body gets what is left of read_timeout (the header had its own).
    ArmTimer(read_timer_, read_timer_generation_,
             std::max(absl::ZeroDuration(),
                      core_->options.read_timeout - (absl::Now() - request_started_)));
  }
  if (!parser_->is_done() && header.version() >= 11 &&
      absl::EqualsIgnoreCase(View(header[bhttp::field::expect]), "100-continue")) {
    // The client waits for this before sending the body (curl does for large
    // POSTs). A body over the limit already failed in async_read_header.
    net::async_write(stream_, net::buffer(kContinue), [self = Self()](error_code ec, size_t) {
      if (self->phase_ == Phase::kClosed) return;
      if (ec) {
        self->Close(absl::OkStatus());
        return;
      }
      self->ReadBody();
    });
    return;
  }
  ReadBody();
}

template <class Stream>
void StreamSession<Stream>::ReadBody() {
  if (parser_->is_done()) {
    Dispatch();
    return;
  }
  read_in_flight_ = true;
  bhttp::async_read(stream_, buffer_, *parser_,
                    [self = Self()](error_code ec, size_t) { self->OnBody(ec); });
}

template <class Stream>
void StreamSession<Stream>::OnBody(error_code ec) {
  read_in_flight_ = false;
  if (phase_ == Phase::kClosed) return;
  if (ec) {
    OnReadError(ec);
    return;
  }
  Dispatch();
}

template <class Stream>
void StreamSession<Stream>::OnReadError(error_code ec) {
  if (ec == bhttp::error::body_limit) {
    Reject(413, absl::StrCat("request body exceeds ", core_->options.max_body_bytes, " bytes\n"));
  } else if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
    Reject(431,
           absl::StrCat("request header exceeds ", core_->options.max_header_bytes, " bytes\n"));
  } else if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message ||
             !IsParseError(ec)) {
    Close(absl::OkStatus());  // Client left, timed out, or the socket failed.
  } else {
    Reject(400, absl::StrCat("malformed request: ", ec.message(), "\n"));
  }
}

template <class Stream>
void StreamSession<Stream>::Dispatch() {
  CancelTimer(read_timer_, read_timer_generation_);
  bhttp::request<bhttp::string_body> message = parser_->release();
  parser_.reset();

  HeaderList headers;
  headers.reserve(std::distance(message.begin(), message.end()));
  for (const auto& field : message) {
    headers.emplace_back(std::string(View(field.name_string())), std::string(View(field.value())));
  }
  HttpRequest request = MakeHttpRequest(std::string(View(message.method_string())),
                                        std::string(View(message.target())), std::move(headers),
                                        std::move(message.body()),
                                        static_cast<int>(message.version()), remote_address_);

  version_ = request.version;
  keep_alive_ = keep_alive_ && message.keep_alive() && !core_->stopping.load();
  phase_ = Phase::kExchange;
  head_sent_ = false;
  exchange_ = std::make_shared<Exchange>(Self(), core_->options.max_stream_buffer_bytes);
  if (buffer_.size() == 0) ReadSome();
  core_->routes.Dispatch(request, MakeResponder(exchange_));
}

template <class Stream>
void StreamSession<Stream>::WriteResponse(HttpResponse response) {
  if (phase_ == Phase::kClosed) return;
  response_ = std::make_unique<bhttp::response<bhttp::string_body>>();
  response_->version(version_);
  SetHeaders(*response_, response.status, response.content_type, response.headers);
  response_->body() = std::move(response.body);
  response_->keep_alive(keep_alive_);
  response_->prepare_payload();
  write_in_flight_ = true;
  ArmTimer(write_timer_, write_timer_generation_, core_->options.write_timeout);
  bhttp::async_write(stream_, *response_, [self = Self()](error_code ec, size_t) {
    self->write_in_flight_ = false;
    self->CancelTimer(self->write_timer_, self->write_timer_generation_);
    if (self->phase_ == Phase::kClosed) return;
    if (ec) {
      self->Close(
          absl::CancelledError(absl::StrCat("writing the response failed: ", ec.message())));
      return;
    }
    self->FinishExchange();
  });
}

template <class Stream>
void StreamSession<Stream>::WriteStreamHead(HttpStreamHead head) {
  if (phase_ == Phase::kClosed) return;
  // HTTP/1.0 has no chunked encoding: the body ends when the connection does.
  chunked_ = version_ >= 11;
  if (!chunked_) keep_alive_ = false;
  stream_head_ = std::make_unique<bhttp::response<bhttp::empty_body>>();
  stream_head_->version(version_);
  SetHeaders(*stream_head_, head.status, head.content_type, head.headers);
  stream_head_->keep_alive(keep_alive_);
  if (chunked_) stream_head_->chunked(true);
  stream_serializer_ =
      std::make_unique<bhttp::response_serializer<bhttp::empty_body>>(*stream_head_);
  write_in_flight_ = true;
  ArmTimer(write_timer_, write_timer_generation_, core_->options.write_timeout);
  bhttp::async_write_header(stream_, *stream_serializer_, [self = Self()](error_code ec, size_t) {
    self->write_in_flight_ = false;
    self->CancelTimer(self->write_timer_, self->write_timer_generation_);
    if (self->phase_ == Phase::kClosed) return;
    if (ec) {
      self->Close(absl::CancelledError(absl::StrCat("writing the head failed: ", ec.message())));
      return;
    }
    self->head_sent_ = true;
    self->FlushStream();
  });
}

template <class Stream>
void StreamSession<Stream>::FlushStream() {
  // The head's and the previous chunk's completions call back here, so an
  // early return loses nothing.
  if (phase_ != Phase::kExchange || !exchange_ || !head_sent_ || write_in_flight_) return;
  std::optional<Exchange::Pending> pending = exchange_->TakePending();
  if (!pending || (pending->data.empty() && !pending->last)) return;
  stream_bytes_ = std::move(pending->data);
  const bool last = pending->last;
  auto on_written = [self = Self(), last](error_code ec, size_t) {
    self->OnStreamWritten(ec, last);
  };
  write_in_flight_ = true;
  ArmTimer(write_timer_, write_timer_generation_, core_->options.write_timeout);
  if (!chunked_) {
    net::async_write(stream_, net::buffer(stream_bytes_), std::move(on_written));
  } else if (stream_bytes_.empty()) {
    net::async_write(stream_, bhttp::make_chunk_last(), std::move(on_written));
  } else if (last) {
    net::async_write(
        stream_,
        beast::buffers_cat(bhttp::make_chunk(net::buffer(stream_bytes_)), bhttp::make_chunk_last()),
        std::move(on_written));
  } else {
    net::async_write(stream_, bhttp::make_chunk(net::buffer(stream_bytes_)), std::move(on_written));
  }
}

template <class Stream>
void StreamSession<Stream>::OnStreamWritten(error_code ec, bool last) {
  write_in_flight_ = false;
  CancelTimer(write_timer_, write_timer_generation_);
  if (phase_ == Phase::kClosed) return;
  if (ec) {
    Close(absl::CancelledError(absl::StrCat("client disconnected: ", ec.message())));
    return;
  }
  if (exchange_) exchange_->OnSent(stream_bytes_.size());
  std::string().swap(stream_bytes_);  // Release the memory, not just the size.
  if (last) {
    FinishExchange();
  } else {
    FlushStream();
  }
}

template <class Stream>
void StreamSession<Stream>::FinishExchange() {
  if (exchange_) exchange_->Finish();
  exchange_.reset();
  response_.reset();
  stream_serializer_.reset();
  stream_head_.reset();
  if (!keep_alive_ || core_->stopping.load()) {
    LingeringClose();
    return;
  }
  if (buffer_.size() > 0) {
    ReadHeader();
    return;
  }
  phase_ = Phase::kIdle;
  ArmTimer(read_timer_, read_timer_generation_, core_->options.idle_timeout);
  if (!read_in_flight_) ReadSome();
}

template <class Stream>
void StreamSession<Stream>::Reject(int status, std::string message) {
  CancelTimer(read_timer_, read_timer_generation_);
  keep_alive_ = false;
  phase_ = Phase::kExchange;
  parser_.reset();
  WriteResponse(core_->options.error_response ? core_->options.error_response(status, message)
                                              : HttpResponse::Text(status, std::move(message)));
}

template <class Stream>
void StreamSession<Stream>::LingeringClose() {
  if (phase_ == Phase::kClosed) return;
  phase_ = Phase::kLingering;
  error_code ignored;
  socket().shutdown(net::ip::tcp::socket::shutdown_send, ignored);
  buffer_.consume(buffer_.size());
  ArmTimer(read_timer_, read_timer_generation_,
           std::min(kMaxLingering, core_->options.read_timeout));
  if (!read_in_flight_) ReadSome();
}

template <class Stream>
void StreamSession<Stream>::Close(absl::Status reason) {
  if (phase_ == Phase::kClosed) return;
  phase_ = Phase::kClosed;
  CancelTimer(read_timer_, read_timer_generation_);
  CancelTimer(write_timer_, write_timer_generation_);
  error_code ignored;
  socket().shutdown(net::ip::tcp::socket::shutdown_both, ignored);
  socket().close(ignored);
  if (exchange_) {
    if (reason.ok()) reason = absl::CancelledError("connection closed");
    exchange_->CancelFromConnection(reason);
    exchange_.reset();
  }
  absl::MutexLock lock(&core_->mu);
  core_->sessions.erase(id_);
}

template <class Stream>
void StreamSession<Stream>::ArmTimer(Timer& timer, uint64_t& generation, absl::Duration timeout) {
  const uint64_t armed = ++generation;
  if (timeout >= absl::Hours(24 * 365)) {  // "Never": chrono would overflow.
    timer.cancel();
    return;
  }
  timer.expires_after(absl::ToChronoNanoseconds(timeout));
  timer.async_wait([self = Self(), &timer, &generation, armed](error_code ec) {
    if (ec || generation != armed || self->phase_ == Phase::kClosed) return;
    const bool reading = &timer == &self->read_timer_;
    self->Close(absl::DeadlineExceededError(reading ? "read timed out" : "write timed out"));
  });
}

template <class Stream>
void StreamSession<Stream>::CancelTimer(Timer& timer, uint64_t& generation) {
  ++generation;
  timer.cancel();
}

std::shared_ptr<Session> MakePlainSession(ServerCore* core, uint64_t id,
                                          net::ip::tcp::socket socket) {
  return std::make_shared<StreamSession<net::ip::tcp::socket>>(core, id, std::move(socket));
}

std::shared_ptr<Session> MakeTlsSession(ServerCore* core, uint64_t id,
                                        net::ip::tcp::socket socket) {
  return std::make_shared<StreamSession<net::ssl::stream<net::ip::tcp::socket>>>(
      core, id, std::move(socket), *core->tls);
}

}  // namespace pdserve::http::internal
