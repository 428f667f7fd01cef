// Streamed (chunked, SSE) responses: incremental delivery, disconnects, the
// buffer bound, and streams across Stop().
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

}  // namespace
}  // namespace pdserve::http
