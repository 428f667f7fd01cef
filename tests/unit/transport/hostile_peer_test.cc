// The tcp KV receiver against hostile peers on raw sockets: forged and
// replayed Begins, ids announced ahead of the genuine sender, wrong trailer
// tags, garbage, and connection floods. Each test then checks that the
// receiver still serves genuine transfers and that every Post ended exactly
// once.
#include <sys/socket.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/secure_random.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/raw_peer.h"
#include "tests/unit/transport/test_util.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"
#include "transport/tcp_wire.h"
#include "transport/transfer_auth.h"

namespace pdserve::transport {
namespace {

using internal::FrameType;
using testing::BeginBytes;
using testing::ChecksummedSender;
using testing::ExpectFrame;
using testing::Far;
using testing::KvArena;
using testing::LayerFrame;
using testing::RawPeer;
using testing::RecvResult;
using testing::Simple;
using testing::TestSecret;

constexpr int kLayers = 2;
constexpr size_t kBlockBytes = 512;

std::unique_ptr<TcpKvReceiver> NewReceiver(TcpReceiverOptions options = {}) {
  auto r = TcpKvReceiver::Create(options);
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

// One genuine transfer: posted with secret, sent by a real sender with the
// same secret (the sender may be shared so that its connection is reused).
class Genuine {
 public:
  Genuine(uint64_t xfer, TransferSecret secret) : xfer_{xfer}, secret_(secret) {
    src_.FillRandom(xfer);
    dst_.Fill(0);
  }
  void Post(KvReceiver& receiver) {
    ASSERT_TRUE(receiver.Post(xfer_, secret_, dst_.PostViews({1}), Far(), got_.Callback()).ok());
  }
  void Send(KvSender& sender, const std::string& endpoint) {
    auto h = sender.StartTransfer(xfer_, secret_, endpoint, kLayers, Far());
    ASSERT_TRUE(h.ok()) << h.status();
    handle_ = std::move(*h);
    for (int l = 0; l < kLayers; ++l)
      ASSERT_TRUE(handle_->SendLayer(l, src_.SendViews(l, {0})).ok());
    ASSERT_TRUE(handle_->Finish("token-1").ok());
  }
  // Both sides report success and the bytes landed.
  void ExpectDelivered() {
    ASSERT_NE(handle_, nullptr);
    EXPECT_TRUE(testing::WaitBounded(*handle_).ok());
    ASSERT_TRUE(got_.Wait());
    EXPECT_TRUE(got_.status().ok()) << got_.status();
    EXPECT_EQ(got_.trailer(), "token-1");
    EXPECT_EQ(got_.calls(), 1);
    for (int l = 0; l < kLayers; ++l) {
      EXPECT_EQ(std::memcmp(dst_.Block(l, 1), src_.Block(l, 0), kBlockBytes), 0) << "layer " << l;
    }
  }
  RecvResult& result() { return got_; }

 private:
  TransferId xfer_;
  TransferSecret secret_;
  KvArena src_{kLayers, 2, kBlockBytes};
  KvArena dst_{kLayers, 2, kBlockBytes};
  RecvResult got_;
  std::unique_ptr<KvSendHandle> handle_;
};

std::unique_ptr<TcpKvSender> NewSender() {
  auto s = TcpKvSender::Create(ChecksummedSender());
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

TEST(HostilePeerTest, ForgedBeginAfterThePostIsRefusedAndTheGenuineTransferProceeds) {
  auto receiver = NewReceiver();
  Genuine genuine(101, TransferSecret::Random());
  genuine.Post(*receiver);
  auto attacker = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(attacker->Send(BeginBytes(101, kLayers, 60000, TransferSecret::Random())));
  ExpectFrame(*attacker, FrameType::kNack, 101, absl::StatusCode::kPermissionDenied);
  // Its abort cannot touch the transfer either.
  ASSERT_TRUE(attacker->SendFrame(Simple(FrameType::kAbort, 101)));
  auto sender = NewSender();
  genuine.Send(*sender, receiver->endpoint());
  genuine.ExpectDelivered();
  EXPECT_EQ(receiver->stats().begins_refused, 1);
  EXPECT_EQ(receiver->stats().transfers_ok, 1);
}

TEST(HostilePeerTest, ForgedBeginBeforeThePostNeverOccupiesTheId) {
  auto receiver = NewReceiver();
  auto attacker = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(attacker->Send(BeginBytes(202, kLayers, 60000, TransferSecret::Random())));
  Genuine genuine(202, TransferSecret::Random());
  auto sender = NewSender();
  genuine.Send(*sender, receiver->endpoint());  // its Begin also waits for the Post
  genuine.Post(*receiver);  // verifies both: refuses the forgery, takes the genuine one
  ExpectFrame(*attacker, FrameType::kNack, 202, absl::StatusCode::kPermissionDenied);
  genuine.ExpectDelivered();
}

// The reproduced attack: forged Begins for a range of ids made every later
// request fail with ALREADY_EXISTS. Now the ids are random anyway, but even
// an attacker who knew them blocks nothing.
TEST(HostilePeerTest, PreAnnouncedIdsBlockNoGenuineTransfer) {
  auto receiver = NewReceiver();
  std::vector<std::unique_ptr<RawPeer>> attackers;
  for (int a = 0; a < 2; ++a) {
    attackers.push_back(RawPeer::Connect(receiver->endpoint()));
    for (uint64_t x = 1; x <= 20; ++x) {
      ASSERT_TRUE(attackers.back()->Send(BeginBytes(x, kLayers, 60000, TransferSecret::Random())));
    }
  }
  auto sender = NewSender();
  std::vector<std::unique_ptr<Genuine>> transfers;
  for (uint64_t x = 1; x <= 20; ++x) {
    transfers.push_back(std::make_unique<Genuine>(x, TransferSecret::Random()));
    // Half posted before the sender starts, half after.
    if (x % 2 == 0) transfers.back()->Post(*receiver);
    transfers.back()->Send(*sender, receiver->endpoint());
    if (x % 2 == 1) transfers.back()->Post(*receiver);
  }
  for (auto& t : transfers) t->ExpectDelivered();
  // Each attacker learns that each of its forgeries was refused: wrong
  // secret, or (if it arrived after the genuine transfer ended) a replay.
  for (auto& attacker : attackers) {
    for (int i = 0; i < 20; ++i) {
      auto f = attacker->ReadFrame();
      ASSERT_TRUE(f.ok()) << f.status();
      EXPECT_EQ(f->first.type, FrameType::kNack);
      auto code = static_cast<absl::StatusCode>(f->first.arg0);
      EXPECT_TRUE(code == absl::StatusCode::kPermissionDenied ||
                  code == absl::StatusCode::kAlreadyExists)
          << f->second;
    }
  }
  KvTransportStats stats = receiver->stats();
  EXPECT_EQ(stats.transfers_ok, 20);
  EXPECT_EQ(stats.transfers_failed, 0);
  EXPECT_EQ(stats.begins_refused, 40);
}

TEST(HostilePeerTest, UnpostedAnnouncementsAreCappedPerConnection) {
  TcpReceiverOptions options;
  options.table.max_unposted_per_link = 8;
  auto receiver = NewReceiver(options);
  auto attacker = RawPeer::Connect(receiver->endpoint());
  for (uint64_t x = 1; x <= 9; ++x) ASSERT_TRUE(attacker->Send(BeginBytes(x, kLayers)));
  ExpectFrame(*attacker, FrameType::kNack, 9, absl::StatusCode::kResourceExhausted);
  // Another connection still gets its announcements through.
  Genuine genuine(1000, TransferSecret::Random());
  auto sender = NewSender();
  genuine.Send(*sender, receiver->endpoint());
  genuine.Post(*receiver);
  genuine.ExpectDelivered();
}

TEST(HostilePeerTest, ReplayedBeginOfAFinishedTransferIsRefused) {
  auto receiver = NewReceiver();
  const TransferSecret secret = TransferSecret::Random();
  KvArena dst(1, 1, 64);
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{7}, secret, dst.PostViews({0}), Far(), got.Callback()).ok());
  const std::string begin = BeginBytes(7, 1, 60000, secret);
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->Send(begin));
  ExpectFrame(*peer, FrameType::kReady, 7);
  ASSERT_TRUE(peer->Send(LayerFrame(7, 0, {std::string(64, 'a')})));
  ASSERT_TRUE(peer->SendTrailer(7, "t", secret));
  ExpectFrame(*peer, FrameType::kAck, 7);
  ASSERT_TRUE(got.Wait());
  ASSERT_TRUE(got.status().ok()) << got.status();
  // The exact bytes again, on a new connection and on the same one.
  auto replayer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(replayer->Send(begin));
  ExpectFrame(*replayer, FrameType::kNack, 7, absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(peer->Send(begin));
  ExpectFrame(*peer, FrameType::kNack, 7, absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(got.calls(), 1);
}

TEST(HostilePeerTest, WrongTrailerTagFailsTheTransfer) {
  auto receiver = NewReceiver();
  const TransferSecret secret = TransferSecret::Random();
  KvArena dst(1, 1, 64);
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{8}, secret, dst.PostViews({0}), Far(), got.Callback()).ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->Send(BeginBytes(8, 1, 60000, secret)));
  ExpectFrame(*peer, FrameType::kReady, 8);
  ASSERT_TRUE(peer->Send(LayerFrame(8, 0, {std::string(64, 'a')})));
  ASSERT_TRUE(peer->SendTrailer(8, "forged token", TransferSecret::Random()));
  ExpectFrame(*peer, FrameType::kNack, 8, absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kPermissionDenied) << got.status();
  EXPECT_EQ(got.trailer(), "");
}

TEST(HostilePeerTest, DuplicateAndGarbledFramesHurtOnlyTheirConnection) {
  auto receiver = NewReceiver();
  Genuine genuine(31, TransferSecret::Random());
  genuine.Post(*receiver);
  auto sender = NewSender();
  // A raw peer opens its own transfer properly, then repeats a layer: that
  // fails its transfer (InvalidArgument), and garbage then closes its link.
  KvArena dst(1, 1, 64);
  RecvResult victim;
  ASSERT_TRUE(
      receiver->Post(TransferId{32}, TestSecret(), dst.PostViews({0}), Far(), victim.Callback())
          .ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->SendBegin(32, 1));
  ExpectFrame(*peer, FrameType::kReady, 32);
  ASSERT_TRUE(peer->SendBegin(32, 1));  // duplicate Begin: refused, transfer untouched
  ExpectFrame(*peer, FrameType::kNack, 32, absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(peer->Send(LayerFrame(32, 0, {std::string(64, 'a')})));
  ASSERT_TRUE(peer->Send(LayerFrame(32, 0, {std::string(64, 'b')})));
  ExpectFrame(*peer, FrameType::kNack, 32, absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(victim.Wait());
  EXPECT_EQ(victim.status().code(), absl::StatusCode::kInvalidArgument);
  std::string garbage(200, '\0');
  SecureRandomBytes(garbage.data(), garbage.size());
  ASSERT_TRUE(peer->Send(garbage));
  EXPECT_TRUE(peer->WaitClosed());
  // Meanwhile the genuine transfer is unaffected.
  genuine.Send(*sender, receiver->endpoint());
  genuine.ExpectDelivered();
  EXPECT_GE(receiver->stats().protocol_errors, 1);
  EXPECT_EQ(victim.calls(), 1);
}

TEST(HostilePeerTest, ConnectionFloodIsCappedAndDoesNotStopAProvenSender) {
  TcpReceiverOptions options;
  options.max_connections = 16;
  options.max_unverified_connections = 4;
  options.verify_timeout = std::chrono::milliseconds(300);
  auto receiver = NewReceiver(options);
  // A genuine sender proves itself first; its connection stays.
  auto sender = NewSender();
  Genuine first(1, TransferSecret::Random());
  first.Post(*receiver);
  first.Send(*sender, receiver->endpoint());
  first.ExpectDelivered();

  // The flood: the first 4 are held (unverified), the rest closed at once.
  std::vector<std::unique_ptr<RawPeer>> flood;
  for (int i = 0; i < 12; ++i) flood.push_back(RawPeer::Connect(receiver->endpoint()));
  for (int i = 4; i < 12; ++i) EXPECT_TRUE(flood[i]->WaitClosed()) << i;
  // The proven sender's connection keeps working during the flood.
  Genuine during(2, TransferSecret::Random());
  during.Post(*receiver);
  during.Send(*sender, receiver->endpoint());
  during.ExpectDelivered();
  // The held ones never prove a secret: closed after verify_timeout.
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(flood[i]->WaitClosed()) << i;
  KvTransportStats stats = receiver->stats();
  EXPECT_EQ(stats.connections_refused, 8);
  EXPECT_EQ(stats.connections_timed_out, 4);

  // And a new sender can connect again afterwards.
  auto later_sender = NewSender();
  Genuine later(3, TransferSecret::Random());
  later.Post(*receiver);
  later.Send(*later_sender, receiver->endpoint());
  later.ExpectDelivered();
}

}  // namespace
}  // namespace pdserve::transport
