// Exercises HttpServer over real loopback sockets, with a synchronous Beast
// client (and curl where an independent client matters).
#include "http/http_server.h"

#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "http/http_stream.h"
#include "http/http_types.h"

namespace pdserve::http {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Generous bound for "eventually": a hung server fails the test instead of
// hanging it. Never used to assert on speed.
constexpr auto kPatience = std::chrono::seconds(30);

std::string View(beast::string_view text) { return std::string(text.data(), text.size()); }

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
std::string RunCommand(const std::string& command) {
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

TEST_F(HttpServerTest, ServesGetAndPostRoutes) {
  MakeServer();
  Client client(Start());

  auto hello = client.Roundtrip(bhttp::verb::get, "/hello");
  EXPECT_EQ(hello.result_int(), 200);
  EXPECT_EQ(hello.body(), "hello\n");
  EXPECT_EQ(View(hello[bhttp::field::content_type]), "text/plain; charset=utf-8");

  bhttp::request<bhttp::string_body> post(bhttp::verb::post, "/echo?name=a%20b&x=1", 11);
  post.set(bhttp::field::host, "localhost");
  post.set("X-Client", "value");
  post.body() = R"({"prompt":"hi"})";
  post.prepare_payload();
  client.SendRaw([&] {
    std::ostringstream os;
    os << post;
    return os.str();
  }());
  auto echo = client.Read();
  EXPECT_EQ(echo.result_int(), 201);
  EXPECT_EQ(echo.body(), R"({"prompt":"hi"})");
  EXPECT_EQ(View(echo[bhttp::field::content_type]), "application/json");
  EXPECT_EQ(View(echo["X-Query-Name"]), "a b");
  EXPECT_EQ(View(echo["X-Client-Header"]), "value");
  EXPECT_THAT(View(echo["X-Remote"]), StartsWith("127.0.0.1:"));
}

TEST_F(HttpServerTest, UnknownPathIs404AndWrongMethodIs405) {
  MakeServer();
  Client client(Start());
  auto missing = client.Roundtrip(bhttp::verb::get, "/nope");
  EXPECT_EQ(missing.result_int(), 404);
  auto wrong_method = client.Roundtrip(bhttp::verb::get, "/echo");
  EXPECT_EQ(wrong_method.result_int(), 405);
  EXPECT_EQ(View(wrong_method[bhttp::field::allow]), "POST");
  // The connection survives both.
  EXPECT_EQ(client.Roundtrip(bhttp::verb::get, "/hello").result_int(), 200);
}

TEST_F(HttpServerTest, FallbackHandlerReplacesDefault404) {
  HttpServerOptions options;
  server_ = std::make_unique<HttpServer>(options);
  server_->SetFallback([](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
    responder->Respond(HttpResponse::Text(418, "fallback " + request.path));
  });
  Client client(Start());
  auto response = client.Roundtrip(bhttp::verb::get, "/anything?x=1");
  EXPECT_EQ(response.result_int(), 418);
  EXPECT_EQ(response.body(), "fallback /anything");
}

TEST_F(HttpServerTest, BodyOverLimitIs413AndClosesConnection) {
  HttpServerOptions options;
  options.max_body_bytes = 1024;
  MakeServer(options);
  const uint16_t port = Start();

  Client at_limit(port);
  auto ok = at_limit.Roundtrip(bhttp::verb::post, "/echo", std::string(1024, 'a'));
  EXPECT_EQ(ok.result_int(), 201);
  EXPECT_EQ(ok.body().size(), 1024u);

  Client over_limit(port);
  auto rejected = over_limit.Roundtrip(bhttp::verb::post, "/echo", std::string(1025, 'a'));
  EXPECT_EQ(rejected.result_int(), 413);
  EXPECT_FALSE(rejected.keep_alive());
  EXPECT_TRUE(over_limit.PeerClosed());
}

TEST_F(HttpServerTest, MalformedRequestsAre400) {
  MakeServer();
  const uint16_t port = Start();
  for (const char* raw : {
           "GET /hello HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
           "GET /hello HTTP/9.9\r\nHost: x\r\n\r\n",
           "G(T /hello HTTP/1.1\r\nHost: x\r\n\r\n",
           "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
           "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
       }) {
    SCOPED_TRACE(raw);
    Client client(port);
    client.SendRaw(raw);
    auto response = client.Read();
    EXPECT_EQ(response.result_int(), 400);
    EXPECT_THAT(response.body(), HasSubstr("malformed request"));
    EXPECT_TRUE(client.PeerClosed());
  }
}

TEST_F(HttpServerTest, HeaderOverLimitIs431) {
  HttpServerOptions options;
  options.max_header_bytes = 1024;
  MakeServer(options);
  Client client(Start());
  client.SendRaw("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(2048, 'b') + "\r\n\r\n");
  EXPECT_EQ(client.Read().result_int(), 431);
}

TEST_F(HttpServerTest, KeepAliveServesSequentialAndPipelinedRequestsOnOneConnection) {
  MakeServer();
  Client client(Start());
  std::string remote;
  for (int i = 0; i < 3; ++i) {
    auto response = client.Roundtrip(bhttp::verb::post, "/echo", "n" + std::to_string(i));
    EXPECT_EQ(response.body(), "n" + std::to_string(i));
    EXPECT_TRUE(response.keep_alive());
    // Same client port each time: the same TCP connection served them all.
    if (i == 0) remote = View(response["X-Remote"]);
    EXPECT_EQ(View(response["X-Remote"]), remote);
  }
  // Two requests in one write come back in order.
  client.SendRaw(
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond");
  EXPECT_EQ(client.Read().body(), "first");
  EXPECT_EQ(client.Read().body(), "second");
}

TEST_F(HttpServerTest, ConnectionCloseIsHonored) {
  MakeServer();
  Client client(Start());
  client.Send(bhttp::verb::get, "/hello", {}, /*keep_alive=*/false);
  auto response = client.Read();
  EXPECT_EQ(response.body(), "hello\n");
  EXPECT_FALSE(response.keep_alive());
  EXPECT_TRUE(client.PeerClosed());
}

TEST_F(HttpServerTest, StreamsSseIncrementally) {
  MakeServer();
  Client client(Start());
  client.Send(bhttp::verb::get, "/stream");
  std::shared_ptr<HttpStream> stream = streams_.Wait();
  ASSERT_NE(stream, nullptr);

  ASSERT_TRUE(stream->Write(FormatSseEvent(R"({"token":"Hel"})")).ok());
  client.ReadStreamHead();
  EXPECT_EQ(client.stream().get().result_int(), 200);
  EXPECT_TRUE(client.stream().chunked());
  EXPECT_EQ(View(client.stream().get()[bhttp::field::content_type]), "text/event-stream");
  EXPECT_EQ(View(client.stream().get()[bhttp::field::cache_control]), "no-cache");
  // The first event arrives while the handler still holds the stream open.
  ASSERT_TRUE(client.ReadStreamUntil(R"({"token":"Hel"})"));
  EXPECT_FALSE(client.stream().is_done());

  ASSERT_TRUE(stream->Write(FormatSseEvent(R"({"token":"lo"})")).ok());
  ASSERT_TRUE(client.ReadStreamUntil(R"({"token":"lo"})"));
  EXPECT_FALSE(client.stream().is_done());

  ASSERT_TRUE(stream->Write(FormatSseEvent("[DONE]")).ok());
  stream->Close();
  EXPECT_FALSE(client.ReadStreamToEnd());
  EXPECT_TRUE(client.stream().is_done());
  EXPECT_EQ(client.stream().get().body(),
            "data: {\"token\":\"Hel\"}\n\ndata: {\"token\":\"lo\"}\n\ndata: [DONE]\n\n");
  EXPECT_EQ(stream->Write("late").code(), absl::StatusCode::kFailedPrecondition);

  // Keep-alive survives a completed stream.
  EXPECT_EQ(client.Roundtrip(bhttp::verb::get, "/hello").body(), "hello\n");
}

TEST_F(HttpServerTest, CurlDecodesStreamAndSendsExpectContinue) {
  MakeServer();
  const uint16_t port = Start();
  std::thread writer([&] {
    std::shared_ptr<HttpStream> stream = streams_.Wait();
    ASSERT_NE(stream, nullptr);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(stream->Write(FormatSseEvent(std::to_string(i))).ok());
    stream->Close();
  });
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  EXPECT_EQ(RunCommand("curl -sSN --max-time 30 " + url + "/stream"),
            "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
  writer.join();
  // curl waits for "100 Continue" before sending the body.
  EXPECT_EQ(RunCommand("head -c 3000 /dev/zero | tr '\\0' 'z' | curl -sS --max-time 30 "
                       "-H 'Expect: 100-continue' --data-binary @- " +
                       url + "/echo | wc -c"),
            "3000\n");
}

TEST_F(HttpServerTest, Http10StreamEndsWithTheConnection) {
  MakeServer();
  Client client(Start());
  client.SendRaw("GET /stream HTTP/1.0\r\n\r\n");
  std::shared_ptr<HttpStream> stream = streams_.Wait();
  ASSERT_NE(stream, nullptr);
  ASSERT_TRUE(stream->Write("part one;").ok());
  ASSERT_TRUE(stream->Write("part two").ok());
  stream->Close();
  auto response = client.Read();
  EXPECT_EQ(response.version(), 10u);
  EXPECT_FALSE(response.chunked());
  EXPECT_EQ(response.body(), "part one;part two");
}

TEST_F(HttpServerTest, ClientDisconnectMidStreamFiresCancelCallback) {
  MakeServer();
  Client client(Start());
  client.Send(bhttp::verb::get, "/stream");
  std::shared_ptr<HttpStream> stream = streams_.Wait();
  ASSERT_NE(stream, nullptr);
  Event cancelled;
  stream->SetCancelCallback([&] { cancelled.Notify(); });
  ASSERT_TRUE(stream->Write(FormatSseEvent("first")).ok());
  client.ReadStreamHead();
  ASSERT_TRUE(client.ReadStreamUntil("first"));

  client.Close();
  ASSERT_TRUE(cancelled.WaitForNotification());
  EXPECT_TRUE(stream->cancelled());
  EXPECT_EQ(stream->Write(FormatSseEvent("second")).code(), absl::StatusCode::kCancelled);
  // A callback set after the fact runs at once.
  Event late;
  stream->SetCancelCallback([&] { late.Notify(); });
  EXPECT_EQ(late.count(), 1);
  EXPECT_EQ(cancelled.count(), 1);
}

TEST_F(HttpServerTest, ClientThatNeverReadsHitsBufferBoundAndStreamIsCancelled) {
  HttpServerOptions options;
  options.max_stream_buffer_bytes = 64 << 10;
  options.write_timeout = absl::Hours(1);  // Only the buffer bound may stop it.
  MakeServer(options);
  Client client(Start(), /*receive_buffer_bytes=*/4096);
  client.Send(bhttp::verb::get, "/stream");
  std::shared_ptr<HttpStream> stream = streams_.Wait();
  ASSERT_NE(stream, nullptr);
  Event cancelled;
  stream->SetCancelCallback([&] { cancelled.Notify(); });

  const std::string chunk(8 << 10, 'x');
  // 1 GiB ceiling: far beyond any socket buffering, so only the bound ends it.
  constexpr int kMaxChunks = (1 << 30) / (8 << 10);
  absl::Status status;
  size_t max_buffered = 0;
  int n_written = 0;
  for (; n_written < kMaxChunks; ++n_written) {
    status = stream->Write(chunk);
    if (!status.ok()) break;
    max_buffered = std::max(max_buffered, stream->buffered_bytes());
  }
  EXPECT_LT(n_written, kMaxChunks);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_LE(max_buffered, options.max_stream_buffer_bytes);
  EXPECT_TRUE(cancelled.WaitForNotification());
  EXPECT_TRUE(stream->cancelled());
  EXPECT_EQ(stream->buffered_bytes(), 0u);  // Unsent data was dropped.
}

TEST_F(HttpServerTest, PacedWriterDeliversLargeStreamWithinBound) {
  HttpServerOptions options;
  options.max_stream_buffer_bytes = 64 << 10;
  MakeServer(options);
  Client client(Start());
  client.Send(bhttp::verb::get, "/stream");
  std::shared_ptr<HttpStream> stream = streams_.Wait();
  ASSERT_NE(stream, nullptr);
  constexpr int kChunks = 512;
  std::thread writer([&] {
    const std::string chunk(8 << 10, 'y');
    for (int i = 0; i < kChunks; ++i) {
      // Back-pressure: wait for room instead of overrunning the bound.
      while (stream->buffered_bytes() + chunk.size() > (64u << 10)) std::this_thread::yield();
      ASSERT_TRUE(stream->Write(chunk).ok());
    }
    stream->Close();
  });
  client.ReadStreamHead();
  EXPECT_FALSE(client.ReadStreamToEnd());
  writer.join();
  EXPECT_EQ(client.stream().get().body().size(), size_t{kChunks} * (8 << 10));
  EXPECT_FALSE(stream->cancelled());
}

TEST_F(HttpServerTest, AsyncHandlerAnswersFromAnotherThread) {
  server_ = std::make_unique<HttpServer>(HttpServerOptions{});
  std::vector<std::thread> workers;
  std::mutex workers_mu;
  server_->HandleAsync(
      "GET", "/later", [&](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
        std::lock_guard lock(workers_mu);
        workers.emplace_back([responder, q = std::string(request.QueryParam("q").value_or(""))] {
          responder->Respond(HttpResponse::Text(200, "later " + q));
        });
      });
  server_->HandleAsync("GET", "/dropped",
                       [](const HttpRequest&, std::shared_ptr<HttpResponder>) {});
  server_->Handle("GET", "/throws",
                  [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("boom"); });
  Client client(Start());
  EXPECT_EQ(client.Roundtrip(bhttp::verb::get, "/later?q=x").body(), "later x");
  EXPECT_EQ(client.Roundtrip(bhttp::verb::get, "/dropped").result_int(), 500);
  EXPECT_EQ(client.Roundtrip(bhttp::verb::get, "/throws").result_int(), 500);
  EXPECT_EQ(client.Roundtrip(bhttp::verb::get, "/later?q=y").body(), "later y");
  std::lock_guard lock(workers_mu);
  for (std::thread& worker : workers) worker.join();
}

TEST_F(HttpServerTest, ConcurrentClients) {
  HttpServerOptions options;
  options.num_threads = 3;
  MakeServer(options);
  const uint16_t port = Start();
  constexpr int kClients = 8;
  constexpr int kRequests = 25;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      Client client(port);
      for (int r = 0; r < kRequests; ++r) {
        const std::string body = std::to_string(c) + ":" + std::to_string(r);
        auto response = client.Roundtrip(bhttp::verb::post, "/echo", body);
        if (response.result_int() == 201 && response.body() == body) ok.fetch_add(1);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients * kRequests);
}

TEST_F(HttpServerTest, StopLetsOpenStreamFinishWithinGrace) {
  MakeServer();
  const uint16_t port = Start();
  Client client(port);
  client.Send(bhttp::verb::get, "/stream");
  std::shared_ptr<HttpStream> stream = streams_.Wait();
  ASSERT_NE(stream, nullptr);
  Event cancelled;
  stream->SetCancelCallback([&] { cancelled.Notify(); });
  Client idle(port);  // Connected, no request: closed at once by Stop.

  std::thread stopper([&] { server_->Stop(absl::Seconds(60)); });
  EXPECT_TRUE(idle.PeerClosed());
  ASSERT_TRUE(stream->Write(FormatSseEvent("still here")).ok());
  stream->Close();
  client.ReadStreamHead();
  EXPECT_FALSE(client.ReadStreamToEnd());
  EXPECT_EQ(client.stream().get().body(), "data: still here\n\n");
  EXPECT_TRUE(client.PeerClosed());  // Stopping ends keep-alive.
  stopper.join();
  EXPECT_EQ(cancelled.count(), 0);

  // The listener is gone.
  net::io_context io;
  tcp::socket socket(io);
  boost::system::error_code ec;
  socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port), ec);
  EXPECT_TRUE(ec);
}

TEST_F(HttpServerTest, StopCancelsStreamsLeftAfterGrace) {
  MakeServer();
  Client client(Start());
  client.Send(bhttp::verb::get, "/stream");
  std::shared_ptr<HttpStream> stream = streams_.Wait();
  ASSERT_NE(stream, nullptr);
  Event cancelled;
  stream->SetCancelCallback([&] { cancelled.Notify(); });
  ASSERT_TRUE(stream->Write(FormatSseEvent("partial")).ok());
  client.ReadStreamHead();
  ASSERT_TRUE(client.ReadStreamUntil("partial"));

  server_->Stop(absl::ZeroDuration());
  EXPECT_TRUE(cancelled.WaitForNotification());
  EXPECT_EQ(stream->Write("after stop").code(), absl::StatusCode::kCancelled);
  // The client sees the body cut short, not a clean end.
  EXPECT_TRUE(client.ReadStreamToEnd());
  EXPECT_FALSE(client.stream().is_done());
}

TEST_F(HttpServerTest, ReleasingStreamWithoutCloseCutsTheBody) {
  MakeServer();
  Client client(Start());
  client.Send(bhttp::verb::get, "/stream");
  {
    std::shared_ptr<HttpStream> stream = streams_.Wait();
    ASSERT_NE(stream, nullptr);
    ASSERT_TRUE(stream->Write("abc").ok());
  }
  streams_.Clear();  // Drop the slot's reference too.
  client.ReadStreamHead();
  EXPECT_TRUE(client.ReadStreamToEnd());
  EXPECT_FALSE(client.stream().is_done());
}

TEST_F(HttpServerTest, IdleConnectionIsClosedAfterIdleTimeout) {
  HttpServerOptions options;
  options.idle_timeout = absl::Milliseconds(100);
  MakeServer(options);
  Client client(Start());
  EXPECT_EQ(client.Roundtrip(bhttp::verb::get, "/hello").result_int(), 200);
  EXPECT_TRUE(client.PeerClosed());  // Blocks until the server gives up on us.
}

TEST_F(HttpServerTest, StartFailsOnBusyPortBadAddressAndTls) {
  MakeServer();
  const uint16_t port = Start();

  HttpServerOptions busy;
  busy.bind_address = "127.0.0.1";
  busy.port = port;
  EXPECT_EQ(HttpServer(busy).Start().code(), absl::StatusCode::kUnavailable);

  HttpServerOptions bad_address;
  bad_address.bind_address = "not an address";
  EXPECT_EQ(HttpServer(bad_address).Start().code(), absl::StatusCode::kInvalidArgument);

  HttpServerOptions tls;
  tls.tls_cert_file = "cert.pem";
  tls.tls_key_file = "key.pem";
  EXPECT_EQ(HttpServer(tls).Start().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace pdserve::http
