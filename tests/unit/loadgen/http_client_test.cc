// HttpClient against a scripted server on loopback: the server side writes
// canned bytes (the client's Beast parser is what is under test).
#include "loadgen/http_client.h"

#include <atomic>
#include <future>
#include <thread>

#include <gtest/gtest.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace pdserve::loadgen {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;

// One connection at a time; each request is answered with the writes the
// script returns for it. A script returning {} leaves the response
// unfinished and waits for the client to go away.
class ScriptedServer {
 public:
  using Script =
      std::function<std::vector<std::string>(const std::string& head, const std::string& body)>;
  // `close_after`: close each connection after one response.
  explicit ScriptedServer(Script script, bool close_after = false)
      : close_after_(close_after),
        script_(std::move(script)),
        acceptor_(ioc_, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)) {
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { Serve(); });
  }
  // Clients must be gone first (their connections end the serving loop).
  ~ScriptedServer() {
    stop_.store(true);
    net::io_context ioc;
    tcp::socket wake(ioc);
    boost::system::error_code ec;
    wake.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port_), ec);
    thread_.join();
  }
  int port() const { return port_; }
  int connections() {
    absl::MutexLock lock(&mu_);
    return connections_;
  }
  std::vector<std::string> bodies() {
    absl::MutexLock lock(&mu_);
    return bodies_;
  }

 private:
  void Serve() {
    for (;;) {
      tcp::socket socket(ioc_);
      boost::system::error_code ec;
      acceptor_.accept(socket, ec);
      if (ec || stop_.load()) return;
      {
        absl::MutexLock lock(&mu_);
        ++connections_;
      }
      net::streambuf in;
      for (;;) {
        const size_t n = net::read_until(socket, in, "\r\n\r\n", ec);
        if (ec) break;
        std::string head(net::buffers_begin(in.data()), net::buffers_begin(in.data()) + n);
        in.consume(n);
        size_t length = 0;
        const size_t at = head.find("Content-Length: ");
        if (at != std::string::npos) {
          absl::SimpleAtoi(head.substr(at + 16, head.find("\r\n", at) - at - 16), &length);
        }
        if (in.size() < length)
          net::read(socket, in, net::transfer_exactly(length - in.size()), ec);
        std::string body(net::buffers_begin(in.data()), net::buffers_begin(in.data()) + length);
        in.consume(length);
        {
          absl::MutexLock lock(&mu_);
          bodies_.push_back(body);
        }
        const std::vector<std::string> writes = script_(head, body);
        if (writes.empty()) {  // hang until the client closes
          char c;
          socket.read_some(net::buffer(&c, 1), ec);
          break;
        }
        for (const std::string& w : writes) net::write(socket, net::buffer(w), ec);
        if (close_after_) break;
      }
    }
  }

  const bool close_after_;
  Script script_;
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  int connections_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> bodies_ ABSL_GUARDED_BY(mu_);
};

std::string Chunk(const std::string& data) {
  return absl::StrCat(absl::Hex(data.size()), "\r\n", data, "\r\n");
}

const char kSseHead[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

std::vector<std::string> StreamWithUsage(const std::string&, const std::string&) {
  return {kSseHead, Chunk("data: {\"choices\":[{\"text\":\"a\"}]}\n\n"),
          Chunk("data: {\"choices\":[{\"text\":\"b\"}]}\n\ndata: {\"choices\":[{\"text\":\"c\","
                "\"finish_reason\":\"length\"}]}\n\n"),
          Chunk("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}"
                "\n\ndata: [DONE]\n\n"),
          "0\r\n\r\n"};
}

RequestOutcome SendAndWait(HttpClient* client, const RequestInput& input) {
  std::promise<RequestOutcome> promise;
  client->Send(input, [&](RequestOutcome o) { promise.set_value(std::move(o)); });
  return promise.get_future().get();
}

std::unique_ptr<HttpClient> Connect(int port, const std::string& model = "m") {
  HttpClientOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.model = model;
  auto c = HttpClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

RequestInput Prompt() {
  RequestInput in;
  in.id = "r1";
  in.text = "the of and";
  in.input_tokens = 3;
  in.max_tokens = 3;
  in.ignore_eos = true;
  return in;
}

TEST(HttpClientTest, StreamsChunksAndTakesCountsFromUsage) {
  ScriptedServer server(StreamWithUsage);
  auto client = Connect(server.port());
  const RequestOutcome o = SendAndWait(client.get(), Prompt());
  EXPECT_TRUE(o.success) << o.error;
  EXPECT_EQ(o.chunk_ns.size(), 3u);
  EXPECT_EQ(o.output_tokens, 3);
  EXPECT_TRUE(o.output_tokens_from_usage);
  EXPECT_EQ(o.input_tokens, 7);
  EXPECT_LE(o.send_ns, o.chunk_ns.front());
  EXPECT_LE(o.chunk_ns.back(), o.end_ns);
  ASSERT_EQ(server.bodies().size(), 1u);
  const nlohmann::json body = nlohmann::json::parse(server.bodies()[0]);
  EXPECT_EQ(body["model"], "m");
  EXPECT_EQ(body["prompt"], "the of and");
  EXPECT_EQ(body["max_tokens"], 3);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  EXPECT_EQ(body["ignore_eos"], true);
}

TEST(HttpClientTest, KeepAliveConnectionIsReused) {
  ScriptedServer server(StreamWithUsage);
  auto client = Connect(server.port());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(SendAndWait(client.get(), Prompt()).success);
  EXPECT_EQ(server.connections(), 1);
}

TEST(HttpClientTest, WithoutUsageCountsChunksAndBodyMayEndAtClose) {
  ScriptedServer server(
      [](const std::string&, const std::string&) {
        return std::vector<std::string>{
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            "data: {\"choices\":[{\"text\":\"x\"}]}\n\n",
            "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n"
            "data: {\"choices\":[{\"text\":\"y\"}]}\n\ndata: [DONE]\n\n"};
      },
      /*close_after=*/true);
  auto client = Connect(server.port());
  const RequestOutcome o = SendAndWait(client.get(), Prompt());
  EXPECT_TRUE(o.success) << o.error;
  EXPECT_EQ(o.output_tokens, 2);  // the empty-text chunk carries no token
  EXPECT_FALSE(o.output_tokens_from_usage);
  EXPECT_EQ(o.input_tokens, -1);
}

TEST(HttpClientTest, ErrorStatusFailsWithTheBody) {
  ScriptedServer server([](const std::string&, const std::string&) {
    const std::string body = "{\"error\":{\"message\":\"prompt too long\"}}";
    return std::vector<std::string>{absl::StrCat(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ",
        body.size(), "\r\n\r\n", body)};
  });
  auto client = Connect(server.port());
  const RequestOutcome o = SendAndWait(client.get(), Prompt());
  EXPECT_FALSE(o.success);
  EXPECT_FALSE(o.cancelled);
  EXPECT_NE(o.error.find("400"), std::string::npos) << o.error;
  EXPECT_NE(o.error.find("prompt too long"), std::string::npos) << o.error;
}

TEST(HttpClientTest, ErrorEventInTheStreamFails) {
  ScriptedServer server([](const std::string&, const std::string&) {
    return std::vector<std::string>{kSseHead, Chunk("data: {\"choices\":[{\"text\":\"a\"}]}\n\n"),
                                    Chunk("data: {\"error\":{\"message\":\"engine died\"}}\n\n"),
                                    "0\r\n\r\n"};
  });
  auto client = Connect(server.port());
  const RequestOutcome o = SendAndWait(client.get(), Prompt());
  EXPECT_FALSE(o.success);
  EXPECT_NE(o.error.find("engine died"), std::string::npos) << o.error;
}

TEST(HttpClientTest, CancelAllCutsAStreamInFlight) {
  ScriptedServer server(
      [](const std::string&, const std::string&) { return std::vector<std::string>{}; });
  auto client = Connect(server.port());
  std::promise<RequestOutcome> promise;
  client->Send(Prompt(), [&](RequestOutcome o) { promise.set_value(std::move(o)); });
  // Wait until the server holds the request, so the cancel hits a stream.
  while (server.bodies().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  client->CancelAll();
  const RequestOutcome o = promise.get_future().get();
  EXPECT_TRUE(o.cancelled);
  EXPECT_FALSE(o.success);
}

TEST(HttpClientTest, ModelInfoNamesTheModelForRequests) {
  ScriptedServer server(
      [](const std::string& head, const std::string&) {
        if (head.rfind("GET /v1/models", 0) == 0) {
          const std::string body = R"({"object":"list","data":[{"id":"smol","object":"model"}]})";
          return std::vector<std::string>{absl::StrCat(
              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
              "Content-Length: ",
              body.size(), "\r\n\r\n", body)};
        }
        return StreamWithUsage(head, "");
      },
      /*close_after=*/true);
  auto client = Connect(server.port(), /*model=*/"");
  auto info = client->GetModelInfo(absl::Seconds(10));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name, "smol");
  EXPECT_TRUE(SendAndWait(client.get(), Prompt()).success);
  ASSERT_EQ(server.bodies().size(), 2u);
  EXPECT_EQ(nlohmann::json::parse(server.bodies()[1])["model"], "smol");
}

TEST(HttpClientTest, RefusedConnectionIsAFailure) {
  int port;
  {
    net::io_context ioc;
    tcp::acceptor a(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    port = a.local_endpoint().port();
  }  // closed again: nothing listens there now
  auto client = Connect(port);
  const RequestOutcome o = SendAndWait(client.get(), Prompt());
  EXPECT_FALSE(o.success);
  EXPECT_FALSE(o.cancelled);
  EXPECT_NE(o.error.find("connect"), std::string::npos) << o.error;
  EXPECT_FALSE(client->GetModelInfo(absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace pdserve::loadgen
