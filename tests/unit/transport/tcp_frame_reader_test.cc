// Small frames arrive whole however the bytes are split, and corrupt or
// truncated input is an error, never a crash.
#include "transport/tcp_frame_reader.h"

#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "transport/tcp_socket.h"

namespace pdserve::transport::internal {
namespace {

class FrameReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    reader_fd_ = UniqueFd(fds[0]);
    writer_fd_ = UniqueFd(fds[1]);
  }
  void Write(const std::string& bytes) {
    ASSERT_EQ(::write(writer_fd_.get(), bytes.data(), bytes.size()),
              static_cast<ssize_t>(bytes.size()));
  }
  std::string Nack(uint64_t xfer, const std::string& text) {
    FrameHeader h;
    h.type = FrameType::kNack;
    h.xfer_id = xfer;
    h.arg0 = static_cast<uint32_t>(absl::StatusCode::kCancelled);
    return EncodeSmallFrame(h, text, /*checksum=*/true);
  }

  UniqueFd reader_fd_, writer_fd_;
  SmallFrameReader reader_;
  WireLimits limits_;
};

TEST_F(FrameReaderTest, ReassemblesFramesSplitAnywhere) {
  std::string wire = Nack(7, "cancelled by the receiver") + Nack(8, "");
  int seen = 0;
  for (char c : wire) {
    auto f = reader_.Next(reader_fd_.get(), limits_);
    ASSERT_TRUE(f.ok()) << f.status();
    if (f->has_value()) {
      ++seen;
      EXPECT_EQ((*f)->header.xfer_id, 7u);
      EXPECT_EQ((*f)->payload, "cancelled by the receiver");
    }
    Write(std::string(1, c));
  }
  EXPECT_EQ(seen, 1);
  auto last = reader_.Next(reader_fd_.get(), limits_);
  ASSERT_TRUE(last.ok());
  ASSERT_TRUE(last->has_value());
  EXPECT_EQ((*last)->header.xfer_id, 8u);
  EXPECT_EQ((*last)->header.type, FrameType::kNack);
  auto none = reader_.Next(reader_fd_.get(), limits_);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(FrameReaderTest, CorruptPayloadIsDataLoss) {
  std::string wire = Nack(7, "text");
  wire.back() ^= 1;
  Write(wire);
  EXPECT_EQ(reader_.Next(reader_fd_.get(), limits_).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(FrameReaderTest, GarbageAndTruncationAreErrors) {
  Write(std::string(kFrameHeaderBytes, 'g'));
  EXPECT_FALSE(reader_.Next(reader_fd_.get(), limits_).ok());

  SmallFrameReader fresh;
  Write(Nack(1, "abc").substr(0, kFrameHeaderBytes + 1));  // 2 payload bytes short
  auto partial = fresh.Next(reader_fd_.get(), limits_);
  ASSERT_TRUE(partial.ok());
  EXPECT_FALSE(partial->has_value());
  writer_fd_.Reset();
  EXPECT_EQ(fresh.Next(reader_fd_.get(), limits_).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace pdserve::transport::internal
