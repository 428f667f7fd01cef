// HttpServer over real loopback sockets: routing, limits, malformed input,
// keep-alive, asynchronous handlers, concurrency and lifecycle.
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "http/http_server.h"
#include "tests/unit/http/http_test_util.h"

namespace pdserve::http {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

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
  // Files that do not exist: HTTPS cannot start.
  EXPECT_EQ(HttpServer(tls).Start().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdserve::http
