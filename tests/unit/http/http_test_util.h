// Test helpers for HttpServer: a blocking Beast client on one loopback
// connection, hand-off of streams from handlers, and a fixture with routes.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "http/http_server.h"
#include "http/http_stream.h"
#include "http/http_types.h"

namespace pdserve::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

// Generous bound for "eventually": a hung server fails the test instead of
// hanging it. Never used to assert on speed.
inline constexpr auto kPatience = std::chrono::seconds(30);

inline std::string View(beast::string_view text) { return std::string(text.data(), text.size()); }

// A blocking HTTP/1.1 client on one connection.
class Client {
 public:
  explicit Client(uint16_t port, int receive_buffer_bytes = 0) : socket_(io_) {
    socket_.open(tcp::v4());
    if (receive_buffer_bytes > 0) {
      // Set before connect so the advertised window stays small.
      socket_.set_option(net::socket_base::receive_buffer_size(receive_buffer_bytes));
    }
    socket_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  }

  void SendRaw(std::string_view bytes) { net::write(socket_, net::buffer(bytes)); }

  void Send(bhttp::verb method, std::string target, std::string body = {}, bool keep_alive = true,
            int version = 11) {
    bhttp::request<bhttp::string_body> request(method, target, version);
    request.set(bhttp::field::host, "localhost");
    request.keep_alive(keep_alive);
    if (!body.empty() || method == bhttp::verb::post) {
      request.body() = std::move(body);
      request.prepare_payload();
    }
    bhttp::write(socket_, request);
  }

  bhttp::response<bhttp::string_body> Read() {
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(1 << 30);
    bhttp::read(socket_, buffer_, parser);
    return parser.release();
  }

  bhttp::response<bhttp::string_body> Roundtrip(bhttp::verb method, std::string target,
                                                std::string body = {}) {
    Send(method, std::move(target), std::move(body));
    return Read();
  }

  // True when the server closed the connection (EOF or reset) instead of
  // sending more bytes.
  bool PeerClosed() {
    char byte;
    boost::system::error_code ec;
    // Skip whatever is left of earlier responses.
    if (buffer_.size() > 0) return false;
    const size_t n = socket_.read_some(net::buffer(&byte, 1), ec);
    return n == 0 && ec;
  }

  // Starts reading a streamed response: returns once the head is in.
  void ReadStreamHead() {
    stream_parser_.emplace();
    stream_parser_->body_limit(1 << 30);
    bhttp::read_header(socket_, buffer_, *stream_parser_);
  }
  const bhttp::response_parser<bhttp::string_body>& stream() const { return *stream_parser_; }
  // Reads until the streamed body contains `text`; false if the stream ended first.
  bool ReadStreamUntil(std::string_view text) {
    while (stream_parser_->get().body().find(text) == std::string::npos) {
      if (stream_parser_->is_done()) return false;
      boost::system::error_code ec;
      bhttp::read_some(socket_, buffer_, *stream_parser_, ec);
      if (ec) return false;
    }
    return true;
  }
  // Reads the rest of the streamed body; the error says how it ended.
  boost::system::error_code ReadStreamToEnd() {
    boost::system::error_code ec;
    bhttp::read(socket_, buffer_, *stream_parser_, ec);
    return ec;
  }

  void Close() {
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

 private:
  net::io_context io_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::response_parser<bhttp::string_body>> stream_parser_;
};

// Hands streams opened by a handler to the test thread.
class StreamSlot {
 public:
  void Put(std::shared_ptr<HttpStream> stream) {
    std::lock_guard lock(mu_);
    streams_.push_back(std::move(stream));
    cv_.notify_all();
  }
  std::shared_ptr<HttpStream> Wait(size_t index = 0) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, kPatience, [&] { return streams_.size() > index; });
    return streams_.size() > index ? streams_[index] : nullptr;
  }
  void Clear() {
    std::lock_guard lock(mu_);
    streams_.clear();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<HttpStream>> streams_;
};

// A one-shot flag a callback raises from any thread.
class Event {
 public:
  void Notify() {
    std::lock_guard lock(mu_);
    ++count_;
    cv_.notify_all();
  }
  bool WaitForNotification() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return count_ > 0; });
  }
  int count() {
    std::lock_guard lock(mu_);
    return count_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
};

// Runs a shell command and returns its stdout.
inline std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  return out;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (server_) server_->Stop(absl::ZeroDuration());
  }

  HttpServer& MakeServer(HttpServerOptions options = {}) {
    options.bind_address = "127.0.0.1";
    options.port = 0;
    server_ = std::make_unique<HttpServer>(options);
    server_->Handle("GET", "/hello",
                    [](const HttpRequest&) { return HttpResponse::Text(200, "hello\n"); });
    server_->Handle("POST", "/echo", [](const HttpRequest& request) {
      HttpResponse response = HttpResponse::Json(201, request.body);
      response.headers.emplace_back("X-Query-Name",
                                    std::string(request.QueryParam("name").value_or("")));
      response.headers.emplace_back("X-Client-Header",
                                    std::string(request.Header("x-client").value_or("")));
      response.headers.emplace_back("X-Remote", request.remote_address);
      return response;
    });
    server_->HandleAsync("GET", "/stream",
                         [this](const HttpRequest&, std::shared_ptr<HttpResponder> responder) {
                           HttpStreamHead head;
                           head.headers.emplace_back("Cache-Control", "no-cache");
                           streams_.Put(responder->OpenStream(std::move(head)));
                         });
    return *server_;
  }

  uint16_t Start() {
    absl::Status status = server_->Start();
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_NE(server_->port(), 0);
    return server_->port();
  }

  std::unique_ptr<HttpServer> server_;
  StreamSlot streams_;
};

}  // namespace pdserve::http
