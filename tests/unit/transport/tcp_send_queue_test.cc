// The sender's frame queue: the iovecs it gathers are exactly the wire bytes,
// and a frame cut short by an abort keeps the stream in sync without reading
// the caller's blocks again.
#include "transport/tcp_send_queue.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "transport/transfer_auth.h"

namespace pdserve::transport::internal {
namespace {

std::string Concat(const std::vector<iovec>& iov) {
  std::string out;
  for (const iovec& v : iov) out.append(static_cast<const char*>(v.iov_base), v.iov_len);
  return out;
}

std::string GatherAll(SendQueue& q) {
  std::vector<OutFrame*> batch = q.NextBatch(1000, 1000);
  for (OutFrame* f : batch) {
    if (!f->encoded) f->Encode(/*checksum=*/true, MonoClock::now());
  }
  std::vector<iovec> iov;
  SendQueue::Gather(batch, 1000, &iov);
  return Concat(iov);
}

const TransferSecret kSecret = *TransferSecret::FromBytes("0123456789abcdef");

class SendQueueTest : public ::testing::Test {
 protected:
  SendQueueTest() : a_(100, 'a'), b_(50, 'b') {
    blocks_ = {{a_.data(), a_.size()}, {b_.data(), b_.size()}};
  }
  std::string a_, b_;
  std::vector<ConstBlockView> blocks_;
};

TEST_F(SendQueueTest, GathersTheExactWireBytes) {
  SendQueue q;
  q.Push(BeginFrame(TransferId{1}, kSecret, 2, MonoClock::now() + std::chrono::seconds(5)));
  q.Push(LayerFrame(TransferId{1}, 1, blocks_));
  q.Push(TrailerFrame(TransferId{1}, kSecret, "tok"));
  std::string wire = GatherAll(q);
  ASSERT_EQ(wire.size(), (40u + 32) + (40u + 16 + 150) + (40u + 3 + 32));
  const auto* bytes = reinterpret_cast<const uint8_t*>(wire.data());
  auto begin = DecodeFrameHeader(bytes, WireLimits{});
  ASSERT_TRUE(begin.ok());
  EXPECT_EQ(begin->type, FrameType::kBegin);
  EXPECT_GT(begin->arg1, 4000u);  // ~5 s of budget, in ms
  // The Begin's payload is its tag over the fields as sent.
  AuthTag tag = BeginTag(kSecret, TransferId{1}, 2, begin->arg1);
  EXPECT_EQ(wire.substr(40, 32), std::string(reinterpret_cast<const char*>(tag.data()), 32));
  auto layer = DecodeFrameHeader(bytes + 72, WireLimits{});
  ASSERT_TRUE(layer.ok());
  EXPECT_EQ(layer->payload_len, 16u + 150u);
  EXPECT_EQ(layer->payload_crc, Crc32(0, wire.data() + 112, 166));
  EXPECT_EQ(GetU64Le(bytes + 112), 100u);
  EXPECT_EQ(wire.substr(128, 100), a_);
  EXPECT_EQ(wire.substr(228, 50), b_);
  // The trailer, then its tag.
  tag = TrailerTag(kSecret, TransferId{1}, "tok");
  EXPECT_EQ(wire.substr(wire.size() - 35),
            "tok" + std::string(reinterpret_cast<const char*>(tag.data()), 32));
}

TEST_F(SendQueueTest, IovecLimitKeepsAPrefixOfTheStream) {
  SendQueue q;
  q.Push(LayerFrame(TransferId{1}, 0, blocks_));
  q.Push(TrailerFrame(TransferId{1}, kSecret, "tok"));
  std::vector<OutFrame*> batch = q.NextBatch(10, 1000);
  for (OutFrame* f : batch) f->Encode(false, MonoClock::now());
  std::vector<iovec> iov;
  size_t bytes = SendQueue::Gather(batch, 3, &iov);  // header, table, block a
  EXPECT_EQ(iov.size(), 3u);
  EXPECT_EQ(bytes, 40u + 16 + 100);
  EXPECT_EQ(Concat(iov).substr(56), a_);
}

TEST_F(SendQueueTest, AbortMidFrameCopiesTheRestOnce) {
  SendQueue q;
  q.Push(LayerFrame(TransferId{1}, 0, blocks_));
  q.Push(LayerFrame(TransferId{1}, 1, blocks_));
  q.Push(TrailerFrame(TransferId{2}, kSecret, "other"));
  std::string wire = GatherAll(q);
  int completed = 0;
  q.Advance(120, [&](const OutFrame&) { ++completed; });  // into block a of frame 0
  EXPECT_EQ(completed, 0);
  EXPECT_EQ(q.Drop(TransferId{1}, /*keep_begin=*/false), 1);  // frame 1 never started
  ASSERT_EQ(q.size(), 2u);
  // The caller may now reuse its blocks: the rest comes from the queue's copy.
  a_.assign(a_.size(), 'X');
  b_.assign(b_.size(), 'Y');
  std::string rest = GatherAll(q);
  EXPECT_EQ(rest, wire.substr(120, 206 - 120) + wire.substr(2 * 206));
  q.Advance(rest.size(), [&](const OutFrame&) { ++completed; });
  EXPECT_EQ(completed, 2);
  EXPECT_TRUE(q.empty());
}

TEST_F(SendQueueTest, DropKeepsTheBeginWhenAsked) {
  SendQueue q;
  q.Push(BeginFrame(TransferId{1}, kSecret, 2, MonoClock::now()));
  q.Push(LayerFrame(TransferId{1}, 0, blocks_));
  EXPECT_EQ(q.Drop(TransferId{1}, /*keep_begin=*/true), 1);
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.Drop(TransferId{1}, /*keep_begin=*/false), 1);
  EXPECT_TRUE(q.empty());
}

}  // namespace
}  // namespace pdserve::transport::internal
