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

namespace pdserve::http {
namespace {

TEST_F(HttpServerTest, ConnectionsPastTheCapAreRefusedAndCounted) {
  HttpServerOptions options;
  options.max_connections = 2;
  MakeServer(options);
  const uint16_t port = Start();
  auto first = std::make_unique<Client>(port);
  Client second(port);
  // Both are served (and so both are registered before the third arrives).
  EXPECT_EQ(first->Roundtrip(bhttp::verb::get, "/hello").result_int(), 200);
  EXPECT_EQ(second.Roundtrip(bhttp::verb::get, "/hello").result_int(), 200);

  Client third(port);
  const auto refused = third.Read();  // sent without a request
  EXPECT_EQ(refused.result_int(), 503);
  EXPECT_TRUE(third.PeerClosed());
  EXPECT_EQ(server_->rejected_connections(), 1u);

  // A slot frees when a connection closes; the server then serves again.
  first->Close();
  first.reset();
  int status = 0;
  for (int attempt = 0; attempt < 300 && status != 200; ++attempt) {
    Client again(port);
    again.Send(bhttp::verb::get, "/hello");
    boost::system::error_code ec;
    try {
      status = again.Read().result_int();
    } catch (const boost::system::system_error&) {
      status = 0;  // refused while the old connection was still closing
    }
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status, 200);
  EXPECT_EQ(second.Roundtrip(bhttp::verb::get, "/hello").result_int(), 200);
}

TEST_F(HttpServerTest, SlowLorisHeaderIsCutOffByTheHeaderTimeout) {
  HttpServerOptions options;
  options.header_timeout = absl::Milliseconds(300);
  options.read_timeout = absl::Hours(1);  // only the header deadline can end this
  options.idle_timeout = absl::Hours(1);
  MakeServer(options);
  Client client(Start());
  // One byte every 20 ms of a header that would take a minute to finish.
  const std::string header = "GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: " + std::string(3000, 'a');
  bool cut_off = false;
  for (char c : header) {
    try {
      client.SendRaw(std::string_view(&c, 1));
    } catch (const boost::system::system_error&) {
      cut_off = true;  // reset by the server
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(cut_off) << "the server kept reading a trickled header";
}

TEST_F(HttpServerTest, SlowBodyIsCutOffByTheReadTimeout) {
  HttpServerOptions options;
  options.header_timeout = absl::Hours(1);
  options.read_timeout = absl::Milliseconds(300);
  MakeServer(options);
  Client client(Start());
  client.SendRaw("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
  bool cut_off = false;
  for (int i = 0; i < 3000 && !cut_off; ++i) {
    try {
      client.SendRaw("a");
    } catch (const boost::system::system_error&) {
      cut_off = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(cut_off) << "the server kept reading a trickled body";
}

TEST_F(HttpServerTest, TooManyHeaderFieldsIs431) {
  HttpServerOptions options;
  options.max_header_fields = 20;
  MakeServer(options);
  Client client(Start());
  std::string request = "GET /hello HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 50; ++i) request += "X-" + std::to_string(i) + ": 1\r\n";
  client.SendRaw(request + "\r\n");
  EXPECT_EQ(client.Read().result_int(), 431);

  Client ok(server_->port());
  std::string fine = "GET /hello HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 10; ++i) fine += "X-" + std::to_string(i) + ": 1\r\n";
  ok.SendRaw(fine + "\r\n");
  EXPECT_EQ(ok.Read().result_int(), 200);
}

}  // namespace
}  // namespace pdserve::http
