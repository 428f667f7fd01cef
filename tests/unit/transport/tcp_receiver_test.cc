// TcpKvReceiver against raw senders: corrupt, malformed and hostile frames
// fail one transfer or close one connection, never crash the receiver or
// write outside the posted blocks.
#include <sys/socket.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/raw_peer.h"
#include "tests/unit/transport/test_util.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"
#include "transport/tcp_socket.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport {
namespace {

using internal::EncodeFrameHeader;
using internal::EncodeSmallFrame;
using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;
using testing::AllBytesAre;
using testing::Begin;
using testing::BeginBytes;
using testing::ChecksummedSender;
using testing::ExpectFrame;
using testing::FakeReceiver;
using testing::Far;
using testing::In;
using testing::KvArena;
using testing::LayerFrame;
using testing::RawPeer;
using testing::RecvResult;
using testing::Simple;
using testing::TestSecret;
using testing::TrailerBytes;
using testing::WaitBounded;

constexpr uint8_t kBackground = 0xA5;
constexpr uint8_t kReused = 0x3C;

std::unique_ptr<TcpKvReceiver> NewReceiver(TcpReceiverOptions options = {}) {
  auto r = TcpKvReceiver::Create(options);
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

// A full, correct transfer through the real sender: the receiver still works.
void ExpectReceiverHealthy(TcpKvReceiver& receiver, uint64_t xfer) {
  KvArena src(2, 2, 512), dst(2, 2, 512);
  src.FillRandom(xfer);
  auto sender = TcpKvSender::Create(ChecksummedSender());
  ASSERT_TRUE(sender.ok());
  RecvResult got;
  ASSERT_TRUE(
      receiver.Post(TransferId{xfer}, TestSecret(), dst.PostViews({1}), Far(), got.Callback())
          .ok());
  auto h = (*sender)->StartTransfer(TransferId{xfer}, TestSecret(), receiver.endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, {0})).ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, {0})).ok());
  ASSERT_TRUE((*h)->Finish("ok").ok());
  EXPECT_TRUE(WaitBounded(**h).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok()) << got.status();
  EXPECT_EQ(std::memcmp(dst.Block(1, 1), src.Block(1, 0), 512), 0);
}

TEST(TcpReceiverTest, ChecksumMismatchFailsTheTransferWithDataLoss) {
  auto receiver = NewReceiver();
  KvArena dst(1, 2, 256);
  dst.Fill(kBackground);
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{1}, TestSecret(), dst.PostViews({0, 1}), Far(), got.Callback())
          .ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->SendBegin(1, 1));
  ExpectFrame(*peer, FrameType::kReady, 1);
  std::string frame = LayerFrame(1, 0, {std::string(256, 'a'), std::string(256, 'b')});
  frame[frame.size() - 3] ^= 0x20;  // one flipped bit in the data
  ASSERT_TRUE(peer->Send(frame));
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  ExpectFrame(*peer, FrameType::kNack, 1, absl::StatusCode::kDataLoss);
  EXPECT_EQ(receiver->stats().failures(absl::StatusCode::kDataLoss), 1);

  // The stream stayed in sync: the same connection carries the next transfer.
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kAbort, 1)));
  RecvResult next;
  dst.Fill(kBackground);
  ASSERT_TRUE(
      receiver->Post(TransferId{2}, TestSecret(), dst.PostViews({1, 0}), Far(), next.Callback())
          .ok());
  ASSERT_TRUE(peer->SendBegin(2, 1));
  ExpectFrame(*peer, FrameType::kReady, 2);
  ASSERT_TRUE(peer->Send(LayerFrame(2, 0, {std::string(256, 'c'), std::string(256, 'd')})));
  ASSERT_TRUE(peer->SendTrailer(2, "tok"));
  ExpectFrame(*peer, FrameType::kAck, 2);
  ASSERT_TRUE(next.Wait());
  EXPECT_TRUE(next.status().ok()) << next.status();
  EXPECT_EQ(next.trailer(), "tok");
  EXPECT_EQ(dst.Block(0, 1)[0], 'c');
  EXPECT_EQ(dst.Block(0, 0)[255], 'd');
}

TEST(TcpReceiverTest, TrailerChecksumMismatchIsDataLoss) {
  auto receiver = NewReceiver();
  KvArena dst(1, 1, 64);
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{1}, TestSecret(), dst.PostViews({0}), Far(), got.Callback()).ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->SendBegin(1, 1));
  ExpectFrame(*peer, FrameType::kReady, 1);
  ASSERT_TRUE(peer->Send(LayerFrame(1, 0, {std::string(64, 'x')})));
  std::string trailer = TrailerBytes(1, "token");
  trailer.back() ^= 1;
  ASSERT_TRUE(peer->Send(trailer));
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  ExpectFrame(*peer, FrameType::kNack, 1, absl::StatusCode::kDataLoss);
}

// Each of these closes the connection; the receiver keeps serving others.
TEST(TcpReceiverTest, MalformedFramesCloseTheConnection) {
  auto receiver = NewReceiver();
  std::vector<std::pair<std::string, std::string>> cases;
  cases.push_back({"garbage", std::string(kFrameHeaderBytes, '\x5a')});
  {
    std::string f = BeginBytes(1, 2);
    f[0] = 'X';
    cases.push_back({"bad magic", f});
  }
  {
    std::string f = BeginBytes(1, 2);
    f[20] ^= 1;  // header checksum no longer matches
    cases.push_back({"corrupt header", f});
  }
  {
    FrameHeader h = Simple(FrameType::kLayer, 1);
    h.arg1 = 1;
    h.payload_len = uint64_t{1} << 40;
    uint8_t buf[kFrameHeaderBytes];
    EncodeFrameHeader(h, buf);
    cases.push_back({"absurd length", std::string(reinterpret_cast<char*>(buf), sizeof(buf))});
  }
  {
    FrameHeader h = Simple(FrameType::kTrailer, 1);
    h.payload_len = uint64_t{1} << 30;
    uint8_t buf[kFrameHeaderBytes];
    EncodeFrameHeader(h, buf);
    cases.push_back({"huge trailer", std::string(reinterpret_cast<char*>(buf), sizeof(buf))});
  }
  cases.push_back({"wrong direction", EncodeSmallFrame(Simple(FrameType::kAck, 1), "", false)});
  cases.push_back({"data for unknown transfer", LayerFrame(77, 0, {std::string(100, 'z')})});
  cases.push_back({"trailer for unknown transfer",
                   EncodeSmallFrame(Simple(FrameType::kTrailer, 78), "t", false)});
  cases.push_back(
      {"data before Ready", BeginBytes(79, 1) + LayerFrame(79, 0, {std::string(100, 'z')})});
  {
    // Block sizes that do not add up to the payload.
    std::string payload(8, '\0');
    internal::PutU64Le(1000, reinterpret_cast<uint8_t*>(payload.data()));
    payload += std::string(10, 'q');
    FrameHeader h = Simple(FrameType::kLayer, 80);
    h.arg1 = 1;
    cases.push_back({"inconsistent block table", EncodeSmallFrame(h, payload, false)});
  }
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    auto peer = RawPeer::Connect(receiver->endpoint());
    ASSERT_TRUE(peer->Send(bytes));
    EXPECT_TRUE(peer->WaitClosed());
  }
  // A sender that vanishes mid-header or mid-payload is just a closed link.
  {
    auto peer = RawPeer::Connect(receiver->endpoint());
    peer->Send(BeginBytes(90, 1).substr(0, 17));
  }
  ExpectReceiverHealthy(*receiver, 1234);
}

TEST(TcpReceiverTest, SenderConnectionLossFailsItsTransfers) {
  auto receiver = NewReceiver();
  KvArena dst(2, 1, 4096);
  dst.Fill(kBackground);
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{1}, TestSecret(), dst.PostViews({0}), Far(), got.Callback()).ok());
  {
    auto peer = RawPeer::Connect(receiver->endpoint());
    ASSERT_TRUE(peer->SendBegin(1, 2));
    ExpectFrame(*peer, FrameType::kReady, 1);
    // Half of layer 0, then the sender dies.
    std::string frame = LayerFrame(1, 0, {std::string(4096, 'k')});
    ASSERT_TRUE(peer->Send(frame.substr(0, frame.size() / 2)));
  }
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
}

// Data already on the wire when the receiver gives up is read and dropped;
// it never reaches the (reused) blocks, and the connection survives.
void LateDataIsDiscarded(bool use_cancel) {
  auto receiver = NewReceiver();
  KvArena dst(1, 2, 1024);
  dst.Fill(kBackground);
  RecvResult got;
  Deadline deadline = use_cancel ? Far() : In(std::chrono::milliseconds(100));
  ASSERT_TRUE(
      receiver->Post(TransferId{1}, TestSecret(), dst.PostViews({0, 1}), deadline, got.Callback())
          .ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->SendBegin(1, 1));
  ExpectFrame(*peer, FrameType::kReady, 1);
  if (use_cancel) {
    ASSERT_TRUE(receiver->Cancel(TransferId{1}).ok());
  }
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(),
            use_cancel ? absl::StatusCode::kCancelled : absl::StatusCode::kDeadlineExceeded);
  ExpectFrame(*peer, FrameType::kNack, 1, got.status().code());
  dst.Fill(kReused);
  ASSERT_TRUE(peer->Send(LayerFrame(1, 0, {std::string(1024, 'L'), std::string(1024, 'M')})));
  ASSERT_TRUE(peer->SendTrailer(1, "late"));
  // Frames are handled in order: once transfer 2 is Ready, the late layer
  // has been consumed.
  KvArena dst2(1, 1, 8);
  RecvResult got2;
  ASSERT_TRUE(
      receiver->Post(TransferId{2}, TestSecret(), dst2.PostViews({0}), Far(), got2.Callback())
          .ok());
  ASSERT_TRUE(peer->SendBegin(2, 1));
  ExpectFrame(*peer, FrameType::kReady, 2);
  EXPECT_TRUE(AllBytesAre(dst, kReused));
  EXPECT_EQ(got.calls(), 1);
  ASSERT_TRUE(receiver->Cancel(TransferId{2}).ok());
}

TEST(TcpReceiverTest, LateDataAfterCancelIsDiscarded) { LateDataIsDiscarded(true); }
TEST(TcpReceiverTest, LateDataAfterDeadlineIsDiscarded) { LateDataIsDiscarded(false); }

TEST(TcpReceiverTest, UnpostedAnnouncementsAreBounded) {
  TcpReceiverOptions options;
  options.table.max_unposted = 3;
  auto receiver = NewReceiver(options);
  auto peer = RawPeer::Connect(receiver->endpoint());
  for (uint64_t x = 1; x <= 4; ++x) ASSERT_TRUE(peer->SendBegin(x, 1));
  ExpectFrame(*peer, FrameType::kNack, 4, absl::StatusCode::kResourceExhausted);
  // Announcements also expire on the budget the sender gave.
  ASSERT_TRUE(peer->SendBegin(5, 1, /*budget_ms=*/0));
  // 1..3 are still waiting; 5 was refused (limit) or expired at once.
  auto f = peer->ReadFrame();
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->first.type, FrameType::kNack);
  EXPECT_EQ(f->first.xfer_id, 5u);
}

TEST(TcpReceiverTest, DuplicateAnnouncementIsRefusedWithoutHurtingTheFirst) {
  auto receiver = NewReceiver();
  KvArena dst(1, 1, 128);
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{1}, TestSecret(), dst.PostViews({0}), Far(), got.Callback()).ok());
  auto first = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(first->SendBegin(1, 1));
  ExpectFrame(*first, FrameType::kReady, 1);
  auto second = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(second->SendBegin(1, 1));
  ExpectFrame(*second, FrameType::kNack, 1, absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(second->SendFrame(Simple(FrameType::kAbort, 1)));  // must not abort the first
  ASSERT_TRUE(first->Send(LayerFrame(1, 0, {std::string(128, 'f')})));
  ASSERT_TRUE(first->SendTrailer(1, ""));
  ExpectFrame(*first, FrameType::kAck, 1);
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok()) << got.status();
}

}  // namespace
}  // namespace pdserve::transport
