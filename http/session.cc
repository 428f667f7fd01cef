#include "http/session.h"

#include <algorithm>
#include <exception>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_cat.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"

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

Session::Session(ServerCore* core, uint64_t id, net::ip::tcp::socket socket)
    : core_(core),
      id_(id),
      socket_(std::move(socket)),
      read_timer_(socket_.get_executor()),
      write_timer_(socket_.get_executor()) {
  error_code ec;
  const auto endpoint = socket_.remote_endpoint(ec);
  if (!ec) remote_address_ = absl::StrCat(endpoint.address().to_string(), ":", endpoint.port());
}

Session::~Session() = default;

void Session::Start() {
  net::post(socket_.get_executor(), [self = shared_from_this()] {
    if (self->phase_ == Phase::kClosed) return;
    self->phase_ = Phase::kIdle;
    self->ArmTimer(self->read_timer_, self->read_timer_generation_,
                   self->core_->options.idle_timeout);
    self->ReadSome();
  });
}

void Session::OnServerStopping() {
  net::post(socket_.get_executor(), [self = shared_from_this()] {
    self->keep_alive_ = false;
    if (self->phase_ == Phase::kIdle) self->Close(absl::OkStatus());
  });
}

void Session::Abort(absl::Status reason) {
  net::post(socket_.get_executor(),
            [self = shared_from_this(), reason = std::move(reason)] { self->Close(reason); });
}

void Session::PostResponse(HttpResponse response) {
  net::post(socket_.get_executor(),
            [self = shared_from_this(), response = std::move(response)]() mutable {
              self->WriteResponse(std::move(response));
            });
}

void Session::PostStreamHead(HttpStreamHead head) {
  net::post(socket_.get_executor(), [self = shared_from_this(), head = std::move(head)]() mutable {
    self->WriteStreamHead(std::move(head));
  });
}

void Session::PostFlush() {
  net::post(socket_.get_executor(), [self = shared_from_this()] { self->FlushStream(); });
}

void Session::PostCancel(absl::Status reason, std::function<void()> callback) {
  net::post(socket_.get_executor(), [self = shared_from_this(), reason = std::move(reason),
                                     callback = std::move(callback)] {
    self->Close(reason);
    if (callback) callback();
  });
}

void Session::ReadSome() {
  read_in_flight_ = true;
  socket_.async_read_some(
      buffer_.prepare(kReadChunkBytes),
      [self = shared_from_this()](error_code ec, size_t n) { self->OnReadSome(ec, n); });
}

void Session::OnReadSome(error_code ec, size_t n_bytes) {
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

void Session::ReadHeader() {
  phase_ = Phase::kReading;
  parser_.emplace();
  parser_->header_limit(core_->options.max_header_bytes);
  parser_->body_limit(core_->options.max_body_bytes);
  ArmTimer(read_timer_, read_timer_generation_, core_->options.read_timeout);
  read_in_flight_ = true;
  bhttp::async_read_header(
      socket_, buffer_, *parser_,
      [self = shared_from_this()](error_code ec, size_t) { self->OnHeader(ec); });
}

void Session::OnHeader(error_code ec) {
  read_in_flight_ = false;
  if (phase_ == Phase::kClosed) return;
  if (ec) {
    OnReadError(ec);
    return;
  }
  const auto& header = parser_->get();
  if (!parser_->is_done() && header.version() >= 11 &&
      absl::EqualsIgnoreCase(View(header[bhttp::field::expect]), "100-continue")) {
    // The client waits for this before sending the body (curl does for large
    // POSTs). A body over the limit already failed in async_read_header.
    net::async_write(socket_, net::buffer(kContinue),
                     [self = shared_from_this()](error_code ec, size_t) {
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

void Session::ReadBody() {
  if (parser_->is_done()) {
    Dispatch();
    return;
  }
  read_in_flight_ = true;
  bhttp::async_read(socket_, buffer_, *parser_,
                    [self = shared_from_this()](error_code ec, size_t) { self->OnBody(ec); });
}

void Session::OnBody(error_code ec) {
  read_in_flight_ = false;
  if (phase_ == Phase::kClosed) return;
  if (ec) {
    OnReadError(ec);
    return;
  }
  Dispatch();
}

void Session::OnReadError(error_code ec) {
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

void Session::Dispatch() {
  CancelTimer(read_timer_, read_timer_generation_);
  bhttp::request<bhttp::string_body> message = parser_->release();
  parser_.reset();

  HttpRequest request;
  request.method = std::string(View(message.method_string()));
  request.target = std::string(View(message.target()));
  const size_t question = request.target.find('?');
  request.path = request.target.substr(0, question);
  if (question != std::string::npos) {
    request.query = ParseQueryString(std::string_view(request.target).substr(question + 1));
  }
  request.headers.reserve(std::distance(message.begin(), message.end()));
  for (const auto& field : message) {
    request.headers.emplace_back(std::string(View(field.name_string())),
                                 std::string(View(field.value())));
  }
  request.body = std::move(message.body());
  request.version = static_cast<int>(message.version());
  request.remote_address = remote_address_;

  version_ = request.version;
  keep_alive_ = keep_alive_ && message.keep_alive() && !core_->stopping.load();
  phase_ = Phase::kExchange;
  head_sent_ = false;
  exchange_ =
      std::make_shared<Exchange>(shared_from_this(), core_->options.max_stream_buffer_bytes);
  if (buffer_.size() == 0) ReadSome();
  core_->routes.Dispatch(request, MakeResponder(exchange_));
}

void Session::WriteResponse(HttpResponse response) {
  if (phase_ == Phase::kClosed) return;
  response_ = std::make_unique<bhttp::response<bhttp::string_body>>();
  response_->version(version_);
  SetHeaders(*response_, response.status, response.content_type, response.headers);
  response_->body() = std::move(response.body);
  response_->keep_alive(keep_alive_);
  response_->prepare_payload();
  write_in_flight_ = true;
  ArmTimer(write_timer_, write_timer_generation_, core_->options.write_timeout);
  bhttp::async_write(socket_, *response_, [self = shared_from_this()](error_code ec, size_t) {
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

void Session::WriteStreamHead(HttpStreamHead head) {
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
  bhttp::async_write_header(
      socket_, *stream_serializer_, [self = shared_from_this()](error_code ec, size_t) {
        self->write_in_flight_ = false;
        self->CancelTimer(self->write_timer_, self->write_timer_generation_);
        if (self->phase_ == Phase::kClosed) return;
        if (ec) {
          self->Close(
              absl::CancelledError(absl::StrCat("writing the head failed: ", ec.message())));
          return;
        }
        self->head_sent_ = true;
        self->FlushStream();
      });
}

void Session::FlushStream() {
  // The head's and the previous chunk's completions call back here, so an
  // early return loses nothing.
  if (phase_ != Phase::kExchange || !exchange_ || !head_sent_ || write_in_flight_) return;
  std::optional<Exchange::Pending> pending = exchange_->TakePending();
  if (!pending || (pending->data.empty() && !pending->last)) return;
  stream_bytes_ = std::move(pending->data);
  const bool last = pending->last;
  auto on_written = [self = shared_from_this(), last](error_code ec, size_t) {
    self->OnStreamWritten(ec, last);
  };
  write_in_flight_ = true;
  ArmTimer(write_timer_, write_timer_generation_, core_->options.write_timeout);
  if (!chunked_) {
    net::async_write(socket_, net::buffer(stream_bytes_), std::move(on_written));
  } else if (stream_bytes_.empty()) {
    net::async_write(socket_, bhttp::make_chunk_last(), std::move(on_written));
  } else if (last) {
    net::async_write(
        socket_,
        beast::buffers_cat(bhttp::make_chunk(net::buffer(stream_bytes_)), bhttp::make_chunk_last()),
        std::move(on_written));
  } else {
    net::async_write(socket_, bhttp::make_chunk(net::buffer(stream_bytes_)), std::move(on_written));
  }
}

void Session::OnStreamWritten(error_code ec, bool last) {
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

void Session::FinishExchange() {
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

void Session::Reject(int status, std::string message) {
  CancelTimer(read_timer_, read_timer_generation_);
  keep_alive_ = false;
  phase_ = Phase::kExchange;
  parser_.reset();
  WriteResponse(HttpResponse::Text(status, std::move(message)));
}

void Session::LingeringClose() {
  if (phase_ == Phase::kClosed) return;
  phase_ = Phase::kLingering;
  error_code ignored;
  socket_.shutdown(net::ip::tcp::socket::shutdown_send, ignored);
  buffer_.consume(buffer_.size());
  ArmTimer(read_timer_, read_timer_generation_,
           std::min(kMaxLingering, core_->options.read_timeout));
  if (!read_in_flight_) ReadSome();
}

void Session::Close(absl::Status reason) {
  if (phase_ == Phase::kClosed) return;
  phase_ = Phase::kClosed;
  CancelTimer(read_timer_, read_timer_generation_);
  CancelTimer(write_timer_, write_timer_generation_);
  error_code ignored;
  socket_.shutdown(net::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  if (exchange_) {
    if (reason.ok()) reason = absl::CancelledError("connection closed");
    exchange_->CancelFromConnection(reason);
    exchange_.reset();
  }
  absl::MutexLock lock(&core_->mu);
  core_->sessions.erase(id_);
}

void Session::ArmTimer(Timer& timer, uint64_t& generation, absl::Duration timeout) {
  const uint64_t armed = ++generation;
  if (timeout >= absl::Hours(24 * 365)) {  // "Never": chrono would overflow.
    timer.cancel();
    return;
  }
  timer.expires_after(absl::ToChronoNanoseconds(timeout));
  timer.async_wait([self = shared_from_this(), &timer, &generation, armed](error_code ec) {
    if (ec || generation != armed || self->phase_ == Phase::kClosed) return;
    const bool reading = &timer == &self->read_timer_;
    self->Close(absl::DeadlineExceededError(reading ? "read timed out" : "write timed out"));
  });
}

void Session::CancelTimer(Timer& timer, uint64_t& generation) {
  ++generation;
  timer.cancel();
}

}  // namespace pdserve::http::internal
