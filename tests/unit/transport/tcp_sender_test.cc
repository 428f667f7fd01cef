// TcpKvSender against a fake receiver on a raw socket: the frames it sends,
// and how it survives a hostile or dying receiver.
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
#include "transport/transfer_auth.h"

namespace pdserve::transport {
namespace {

using internal::EncodeFrameHeader;
using internal::EncodeSmallFrame;
using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;
using testing::AllBytesAre;
using testing::Begin;
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
using testing::WaitBounded;

std::unique_ptr<TcpKvSender> NewSender() {
  auto s = TcpKvSender::Create(ChecksummedSender());
  EXPECT_TRUE(s.ok());
  return std::move(*s);
}

TEST(TcpSenderTest, SpeaksTheWireFormat) {
  FakeReceiver fake;
  auto sender = NewSender();
  KvArena src(2, 2, 100);
  src.FillRandom(9);
  auto h = sender->StartTransfer(TransferId{5}, TestSecret(), fake.endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, {1, 0})).ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  auto begin = peer->ReadFrame();
  ASSERT_TRUE(begin.ok());
  EXPECT_EQ(begin->first.type, FrameType::kBegin);
  EXPECT_EQ(begin->first.arg0, 2u);
  EXPECT_GT(begin->first.arg1, 1000u);  // budget in ms
  // Its payload proves the secret over the fields as sent.
  AuthTag tag = BeginTag(TestSecret(), TransferId{5}, 2, begin->first.arg1);
  EXPECT_EQ(begin->second, std::string(reinterpret_cast<const char*>(tag.data()), tag.size()));
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 5)));
  auto layer = peer->ReadFrame();
  ASSERT_TRUE(layer.ok());
  EXPECT_EQ(layer->first.type, FrameType::kLayer);
  EXPECT_EQ(layer->first.arg0, 1u);
  EXPECT_EQ(layer->first.arg1, 2u);
  ASSERT_EQ(layer->second.size(), 16u + 200u);
  EXPECT_EQ(internal::GetU64Le(reinterpret_cast<const uint8_t*>(layer->second.data())), 100u);
  EXPECT_EQ(std::memcmp(layer->second.data() + 16, src.Block(1, 1), 100), 0);
  EXPECT_EQ(std::memcmp(layer->second.data() + 116, src.Block(1, 0), 100), 0);
  EXPECT_EQ(layer->first.payload_crc,
            internal::Crc32(0, layer->second.data(), layer->second.size()));
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, {0})).ok());
  ASSERT_TRUE((*h)->Finish("tr").ok());
  auto layer0 = peer->ReadFrame();
  ASSERT_TRUE(layer0.ok());
  EXPECT_EQ(layer0->first.arg0, 0u);
  auto trailer = peer->ReadFrame();
  ASSERT_TRUE(trailer.ok());
  EXPECT_EQ(trailer->first.type, FrameType::kTrailer);
  tag = TrailerTag(TestSecret(), TransferId{5}, "tr");
  EXPECT_EQ(trailer->second, "tr" + std::string(reinterpret_cast<const char*>(tag.data()), 32));
  EXPECT_FALSE((*h)->Poll().has_value());
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kAck, 5)));
  EXPECT_TRUE(WaitBounded(**h).ok());
}

TEST(TcpSenderTest, NackCarriesTheReceiversVerdict) {
  FakeReceiver fake;
  auto sender = NewSender();
  auto h = sender->StartTransfer(TransferId{6}, TestSecret(), fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->ReadFrame().ok());
  FrameHeader nack = Simple(FrameType::kNack, 6);
  nack.arg0 = static_cast<uint32_t>(absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(peer->SendFrame(nack, "no room for you"));
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("no room for you"), std::string::npos) << s;
  // Begin went out, so the sender closes its side with an Abort.
  auto abort = peer->ReadFrame();
  ASSERT_TRUE(abort.ok());
  EXPECT_EQ(abort->first.type, FrameType::kAbort);
}

TEST(TcpSenderTest, GarbageFromTheReceiverFailsTransfersPromptly) {
  FakeReceiver fake;
  auto sender = NewSender();
  auto h = sender->StartTransfer(TransferId{7}, TestSecret(), fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->Send(std::string(kFrameHeaderBytes, '\x11')));
  EXPECT_EQ(WaitBounded(**h).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(peer->WaitClosed());
}

TEST(TcpSenderTest, PrematureAckIsNotSuccess) {
  FakeReceiver fake;
  auto sender = NewSender();
  KvArena src(2, 1, 64);
  auto h = sender->StartTransfer(TransferId{8}, TestSecret(), fake.endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, {0})).ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->ReadFrame().ok());
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 8)));
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kAck, 8)));  // before layer 1 and the trailer
  absl::Status s = WaitBounded(**h);
  EXPECT_FALSE(s.ok());
}

TEST(TcpSenderTest, ReceiverDyingMidLayerFailsTheSender) {
  FakeReceiver fake;
  auto sender = NewSender();
  constexpr size_t kBig = 48 << 20;  // more than the socket buffers hold
  std::vector<uint8_t> block(kBig, 7);
  auto h = sender->StartTransfer(TransferId{9}, TestSecret(), fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, std::vector<ConstBlockView>{{block.data(), kBig}}).ok());
  ASSERT_TRUE((*h)->Finish("").ok());
  {
    auto peer = fake.Accept();
    ASSERT_NE(peer, nullptr);
    ASSERT_TRUE(peer->ReadFrame().ok());
    ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 9)));
    char buf[1000];
    ASSERT_GT(::recv(peer->fd(), buf, sizeof(buf), MSG_WAITALL), 0);
  }  // closed with unread data: the sender sees a reset
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
}

TEST(TcpSenderTest, AbortMidFrameKeepsTheStreamInSync) {
  FakeReceiver fake;
  auto sender = NewSender();
  constexpr size_t kBig = 48 << 20;
  auto block = std::make_unique<std::vector<uint8_t>>(kBig, 3);
  auto h = sender->StartTransfer(TransferId{10}, TestSecret(), fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, std::vector<ConstBlockView>{{block->data(), kBig}}).ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->ReadFrame().ok());
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 10)));
  char small[4096];
  ASSERT_GT(::recv(peer->fd(), small, sizeof(small), MSG_WAITALL), 0);  // the frame started
  (*h)->Abort();
  block.reset();  // the caller frees its blocks as soon as Abort returns
  // The rest of the frame still arrives (from the sender's own copy), then
  // the Abort, then frames of the next transfer.
  auto h2 = sender->StartTransfer(TransferId{11}, TestSecret(), fake.endpoint(), 1, Far());
  ASSERT_TRUE(h2.ok());
  size_t rest = kFrameHeaderBytes + 8 + kBig - sizeof(small);
  std::vector<char> sink(1 << 20);
  while (rest > 0) {
    ssize_t n = ::recv(peer->fd(), sink.data(), std::min(rest, sink.size()), 0);
    ASSERT_GT(n, 0);
    for (ssize_t i = 0; i < n; ++i) ASSERT_EQ(sink[i], 3);
    rest -= n;
  }
  auto abort = peer->ReadFrame();
  ASSERT_TRUE(abort.ok()) << abort.status();
  EXPECT_EQ(abort->first.type, FrameType::kAbort);
  EXPECT_EQ(abort->first.xfer_id, 10u);
  auto begin = peer->ReadFrame();
  ASSERT_TRUE(begin.ok());
  EXPECT_EQ(begin->first.type, FrameType::kBegin);
  EXPECT_EQ(begin->first.xfer_id, 11u);
}

}  // namespace
}  // namespace pdserve::transport
