// Behaviour every KV transport backend must show, run against tcp and
// loopback: the decode node's blocks receive exactly what the prefill node
// sent, and every failure is a prompt Status on both sides.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/test_util.h"
#include "transport/kv_transport.h"
#include "transport/loopback_transport.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"
#include "transport/tcp_socket.h"

namespace pdserve::transport {
namespace {

using testing::AllBytesAre;
using testing::Far;
using testing::In;
using testing::KvArena;
using testing::LandedExactly;
using testing::RecvResult;
using testing::TestSecret;
using testing::WaitBounded;

enum class Backend { kTcp, kLoopback };

constexpr uint8_t kBackground = 0xA5;
constexpr uint8_t kReused = 0x3C;  // what "freed and reused" blocks hold

class TransportTest : public ::testing::TestWithParam<Backend> {
 protected:
  // A receiver; with `same_as`, at the endpoint of one that was destroyed.
  std::unique_ptr<KvReceiver> NewReceiver(const std::string& same_as = "") {
    if (GetParam() == Backend::kTcp) {
      TcpReceiverOptions options;
      if (!same_as.empty()) options.port = internal::ParseHostPort(same_as)->port;
      auto r = TcpKvReceiver::Create(options);
      EXPECT_TRUE(r.ok()) << r.status();
      return r.ok() ? std::move(*r) : nullptr;
    }
    std::string name = same_as.empty() ? absl::StrCat("decode-", next_name_++)
                                       : same_as.substr(std::strlen(kLoopbackScheme));
    auto r = LoopbackKvReceiver::Create(&network_, name);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : nullptr;
  }

  std::unique_ptr<KvSender> NewSender() {
    if (GetParam() == Backend::kTcp) {
      TcpSenderOptions options;
      options.checksum = true;  // tests always verify payloads end to end
      auto s = TcpKvSender::Create(options);
      EXPECT_TRUE(s.ok()) << s.status();
      return s.ok() ? std::move(*s) : nullptr;
    }
    return std::make_unique<LoopbackKvSender>(&network_);
  }

  LoopbackNetwork network_;  // first member: outlives every receiver
  int next_name_ = 0;
};

// The prefill side: ids of the blocks it computed, in position order.
std::vector<int> Ids(std::initializer_list<int> ids) { return ids; }

TEST_P(TransportTest, ManyLayersLandInExactlyThePostedBlocks) {
  constexpr int kLayers = 30, kSrcBlocks = 40, kDstBlocks = 48;
  constexpr size_t kBlockBytes = 12 << 10;
  KvArena src(kLayers, kSrcBlocks, kBlockBytes);
  src.FillRandom(7);
  KvArena dst(kLayers, kDstBlocks, kBlockBytes);
  dst.Fill(kBackground);
  // Different, scattered block ids on the two nodes.
  std::vector<int> src_ids, dst_ids;
  for (int i = 0; i < 32; ++i) {
    src_ids.push_back((i * 7) % kSrcBlocks);
    dst_ids.push_back(kDstBlocks - 1 - i);
  }

  auto receiver = NewReceiver();
  auto sender = NewSender();
  RecvResult got;
  TransferId xfer{42};
  ASSERT_TRUE(
      receiver->Post(xfer, TestSecret(), dst.PostViews(dst_ids), Far(), got.Callback()).ok());
  std::atomic<int> send_done{0};
  absl::Status send_status;
  auto h = sender->StartTransfer(xfer, TestSecret(), receiver->endpoint(), kLayers, Far(),
                                 [&](absl::Status s) {
                                   send_status = s;
                                   send_done.fetch_add(1);
                                 });
  ASSERT_TRUE(h.ok()) << h.status();
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_TRUE((*h)->SendLayer(l, src.SendViews(l, src_ids)).ok());
  }
  const std::string trailer("tok\0\x01\xff", 6);  // binary-safe
  ASSERT_TRUE((*h)->Finish(trailer).ok());

  EXPECT_TRUE(WaitBounded(**h).ok()) << (*h)->Poll().value_or(absl::OkStatus());
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok()) << got.status();
  EXPECT_EQ(got.trailer(), trailer);
  // The receiver saw the layers land, first before (or with) last.
  EXPECT_GT(got.timing().first_layer_ns, 0);
  EXPECT_LE(got.timing().first_layer_ns, got.timing().last_layer_ns);
  EXPECT_TRUE(LandedExactly(src, src_ids, dst, dst_ids, kLayers, kDstBlocks, kBackground));
  h->reset();  // destroying a finished handle changes nothing
  EXPECT_EQ(send_done.load(), 1);
  EXPECT_TRUE(send_status.ok());
  EXPECT_EQ(got.calls(), 1);

  const int64_t bytes = int64_t{kLayers} * 32 * kBlockBytes;
  KvTransportStats ss = sender->stats(), rs = receiver->stats();
  EXPECT_EQ(ss.transfers_started, 1);
  EXPECT_EQ(ss.transfers_ok, 1);
  EXPECT_EQ(ss.transfers_failed, 0);
  EXPECT_EQ(ss.bytes, bytes);
  EXPECT_EQ(rs.transfers_ok, 1);
  EXPECT_EQ(rs.bytes, bytes);
}

TEST_P(TransportTest, DataSentBeforePostWaitsForThePost) {
  constexpr int kLayers = 4;
  KvArena src(kLayers, 8, 4096);
  src.FillRandom(1);
  KvArena dst(kLayers, 8, 4096);
  dst.Fill(kBackground);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  TransferId xfer{7};
  auto h = sender->StartTransfer(xfer, TestSecret(), receiver->endpoint(), kLayers, Far());
  ASSERT_TRUE(h.ok()) << h.status();
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_TRUE((*h)->SendLayer(l, src.SendViews(l, Ids({0, 1, 2}))).ok());
  }
  ASSERT_TRUE((*h)->Finish("t1").ok());
  // Nothing can complete, or land, without the Post.
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_FALSE((*h)->Poll().has_value());
  EXPECT_TRUE(AllBytesAre(dst, kBackground));

  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(xfer, TestSecret(), dst.PostViews(Ids({5, 3, 1})), Far(), got.Callback())
          .ok());
  EXPECT_TRUE(WaitBounded(**h).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok()) << got.status();
  EXPECT_EQ(got.trailer(), "t1");
  EXPECT_TRUE(LandedExactly(src, Ids({0, 1, 2}), dst, Ids({5, 3, 1}), kLayers, 8, kBackground));
}

TEST_P(TransportTest, PostDeadlineFailsBothSidesAndLateDataIsDropped) {
  constexpr int kLayers = 6;
  KvArena src(kLayers, 4, 8192);
  src.FillRandom(2);
  KvArena dst(kLayers, 4, 8192);
  dst.Fill(kBackground);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  TransferId xfer{9};
  RecvResult got;
  ASSERT_TRUE(receiver
                  ->Post(xfer, TestSecret(), dst.PostViews(Ids({0, 1})),
                         In(std::chrono::milliseconds(200)), got.Callback())
                  .ok());
  auto h = sender->StartTransfer(xfer, TestSecret(), receiver->endpoint(), kLayers, Far());
  ASSERT_TRUE(h.ok());
  // The prefill node stalls after two layers.
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0, 1}))).ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, Ids({0, 1}))).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();

  // The decode node frees the blocks, which get reused at once; whatever the
  // sender still pushes must not land in them.
  dst.Fill(kReused);
  for (int l = 2; l < kLayers; ++l) (*h)->SendLayer(l, src.SendViews(l, Ids({0, 1}))).IgnoreError();
  (*h)->Finish("late").IgnoreError();
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_TRUE(AllBytesAre(dst, kReused));
  EXPECT_EQ(receiver->stats().failures(absl::StatusCode::kDeadlineExceeded), 1);
  EXPECT_EQ(sender->stats().failures(absl::StatusCode::kDeadlineExceeded), 1);
  EXPECT_EQ(got.calls(), 1);
}

TEST_P(TransportTest, PostWithoutSenderExpires) {
  KvArena dst(2, 2, 1024);
  auto receiver = NewReceiver();
  RecvResult got;
  ASSERT_TRUE(receiver
                  ->Post(TransferId{1}, TestSecret(), dst.PostViews(Ids({0})),
                         In(std::chrono::milliseconds(50)), got.Callback())
                  .ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_P(TransportTest, SenderDeadlineWithoutPost) {
  KvArena src(2, 2, 1024);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  auto h = sender->StartTransfer(TransferId{3}, TestSecret(), receiver->endpoint(), 2,
                                 In(std::chrono::milliseconds(100)));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0}))).ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, Ids({0}))).ok());
  ASSERT_TRUE((*h)->Finish("").ok());
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  // A Post after the sender gave up fails (at once, or at the latest at its
  // own deadline) and receives nothing.
  RecvResult got;
  KvArena dst(2, 2, 1024);
  dst.Fill(kBackground);
  absl::Status posted = receiver->Post(TransferId{3}, TestSecret(), dst.PostViews(Ids({0})),
                                       In(std::chrono::milliseconds(50)), got.Callback());
  if (posted.ok()) {
    ASSERT_TRUE(got.Wait());
    posted = got.status();
  }
  EXPECT_FALSE(posted.ok());
  EXPECT_TRUE(AllBytesAre(dst, kBackground));
}

TEST_P(TransportTest, CancelRunsOnDoneAndLateDataIsDropped) {
  constexpr int kLayers = 8;
  KvArena src(kLayers, 4, 16384);
  src.FillRandom(3);
  KvArena dst(kLayers, 4, 16384);
  dst.Fill(kBackground);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  TransferId xfer{11};
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(xfer, TestSecret(), dst.PostViews(Ids({3, 2})), Far(), got.Callback()).ok());
  auto h = sender->StartTransfer(xfer, TestSecret(), receiver->endpoint(), kLayers, Far());
  ASSERT_TRUE(h.ok());
  for (int l = 0; l < kLayers / 2; ++l) {
    ASSERT_TRUE((*h)->SendLayer(l, src.SendViews(l, Ids({0, 1}))).ok());
  }
  ASSERT_TRUE(receiver->Cancel(xfer).ok());
  ASSERT_TRUE(got.HasRun());  // before Cancel returned
  EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled);
  dst.Fill(kReused);
  for (int l = kLayers / 2; l < kLayers; ++l) {
    (*h)->SendLayer(l, src.SendViews(l, Ids({0, 1}))).IgnoreError();
  }
  (*h)->Finish("x").IgnoreError();
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_TRUE(AllBytesAre(dst, kReused));
  EXPECT_EQ(receiver->Cancel(xfer).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.calls(), 1);
}

TEST_P(TransportTest, CancelBeforeAnyData) {
  KvArena dst(2, 2, 1024);
  auto receiver = NewReceiver();
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{5}, TestSecret(), dst.PostViews(Ids({0})), Far(), got.Callback())
          .ok());
  ASSERT_TRUE(receiver->Cancel(TransferId{5}).ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled);
  // The id is free again.
  RecvResult again;
  EXPECT_TRUE(
      receiver->Post(TransferId{5}, TestSecret(), dst.PostViews(Ids({0})), Far(), again.Callback())
          .ok());
  EXPECT_TRUE(receiver->Cancel(TransferId{5}).ok());
}

TEST_P(TransportTest, BlockSizeMismatchIsAnErrorOnBothSides) {
  KvArena src(2, 4, 4096);
  src.FillRandom(4);
  KvArena dst(2, 4, 4096);
  dst.Fill(kBackground);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  TransferId xfer{13};
  RecvResult got;
  // Posted 2 blocks, sent 3.
  ASSERT_TRUE(
      receiver->Post(xfer, TestSecret(), dst.PostViews(Ids({0, 1})), Far(), got.Callback()).ok());
  auto h = sender->StartTransfer(xfer, TestSecret(), receiver->endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0, 1, 2}))).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(AllBytesAre(dst, kBackground));
}

TEST_P(TransportTest, BlockBytesMismatchIsAnError) {
  KvArena src(1, 4, 4096);
  KvArena dst(1, 4, 4096);
  dst.Fill(kBackground);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  TransferId xfer{14};
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(xfer, TestSecret(), dst.PostViews(Ids({0, 1})), Far(), got.Callback()).ok());
  auto h = sender->StartTransfer(xfer, TestSecret(), receiver->endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  // Same block count and total, different block boundaries.
  std::vector<ConstBlockView> views = {{src.Block(0, 0), 2048}, {src.Block(0, 1), 6144}};
  ASSERT_TRUE((*h)->SendLayer(0, views).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  EXPECT_EQ(WaitBounded(**h).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(AllBytesAre(dst, kBackground));
}

TEST_P(TransportTest, LayerCountMismatchIsAnError) {
  KvArena dst(3, 2, 1024);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{15}, TestSecret(), dst.PostViews(Ids({0})), Far(), got.Callback())
          .ok());
  auto h = sender->StartTransfer(TransferId{15}, TestSecret(), receiver->endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  EXPECT_EQ(WaitBounded(**h).code(), absl::StatusCode::kInvalidArgument);

  // The other order: the sender announces first, the Post is refused.
  auto h2 = sender->StartTransfer(TransferId{16}, TestSecret(), receiver->endpoint(), 2, Far());
  ASSERT_TRUE(h2.ok());
  absl::Status posted;
  RecvResult never;
  // The announcement may still be in flight; the Post is then accepted and
  // fails through on_done instead.
  posted = receiver->Post(TransferId{16}, TestSecret(), dst.PostViews(Ids({0})), Far(),
                          never.Callback());
  EXPECT_EQ(WaitBounded(**h2).code(), absl::StatusCode::kInvalidArgument);
  if (posted.ok()) {
    ASSERT_TRUE(never.Wait());
    EXPECT_EQ(never.status().code(), absl::StatusCode::kInvalidArgument);
  } else {
    EXPECT_EQ(posted.code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_P(TransportTest, SenderAbortReachesTheReceiver) {
  KvArena src(4, 2, 2048);
  KvArena dst(4, 2, 2048);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  RecvResult got;
  ASSERT_TRUE(
      receiver
          ->Post(TransferId{17}, TestSecret(), dst.PostViews(Ids({0, 1})), Far(), got.Callback())
          .ok());
  auto h = sender->StartTransfer(TransferId{17}, TestSecret(), receiver->endpoint(), 4, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0, 1}))).ok());
  (*h)->Abort();
  ASSERT_TRUE((*h)->Poll().has_value());  // done when Abort returns
  EXPECT_EQ((*h)->Poll()->code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*h)->SendLayer(1, src.SendViews(1, Ids({0, 1}))).code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kAborted) << got.status();
}

TEST_P(TransportTest, ReceiverDestroyedMidTransferFailsTheSender) {
  KvArena src(6, 2, 4096);
  KvArena dst(6, 2, 4096);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  RecvResult got;
  ASSERT_TRUE(
      receiver
          ->Post(TransferId{19}, TestSecret(), dst.PostViews(Ids({0, 1})), Far(), got.Callback())
          .ok());
  auto h = sender->StartTransfer(TransferId{19}, TestSecret(), receiver->endpoint(), 6, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0, 1}))).ok());
  receiver.reset();
  EXPECT_TRUE(got.HasRun());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled);
  // Far deadline: only noticing the dead peer can end the wait.
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(sender->stats().failures(absl::StatusCode::kUnavailable), 1);
}

TEST_P(TransportTest, SenderDestroyedMidTransferFailsTheReceiver) {
  KvArena src(6, 2, 4096);
  KvArena dst(6, 2, 4096);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  RecvResult got;
  ASSERT_TRUE(
      receiver
          ->Post(TransferId{21}, TestSecret(), dst.PostViews(Ids({0, 1})), Far(), got.Callback())
          .ok());
  auto h = sender->StartTransfer(TransferId{21}, TestSecret(), receiver->endpoint(), 6, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0, 1}))).ok());
  // Kill the sender once the receiver knows it (layer 0 has landed).
  absl::Time limit = absl::Now() + absl::Seconds(60);
  while (receiver->stats().bytes == 0 && absl::Now() < limit) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_GT(receiver->stats().bytes, 0);
  sender.reset();
  EXPECT_EQ((*h)->Poll().value_or(absl::OkStatus()).code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(got.Wait());
  // tcp sees the connection drop, loopback the sender's abort.
  EXPECT_TRUE(got.status().code() == absl::StatusCode::kUnavailable ||
              got.status().code() == absl::StatusCode::kAborted)
      << got.status();
}

TEST_P(TransportTest, ReconnectsAfterTheReceiverRestarts) {
  KvArena src(2, 2, 4096);
  src.FillRandom(5);
  auto receiver = NewReceiver();
  const std::string endpoint = receiver->endpoint();
  auto sender = NewSender();
  {
    KvArena dst(2, 2, 4096);
    RecvResult got;
    ASSERT_TRUE(
        receiver->Post(TransferId{1}, TestSecret(), dst.PostViews(Ids({0})), Far(), got.Callback())
            .ok());
    auto h = sender->StartTransfer(TransferId{1}, TestSecret(), endpoint, 2, Far());
    ASSERT_TRUE(h.ok());
    ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0}))).ok());
    receiver.reset();
    EXPECT_EQ(WaitBounded(**h).code(), absl::StatusCode::kUnavailable);
  }
  receiver = NewReceiver(endpoint);
  ASSERT_NE(receiver, nullptr);
  ASSERT_EQ(receiver->endpoint(), endpoint);
  KvArena dst(2, 2, 4096);
  dst.Fill(kBackground);
  RecvResult got;
  ASSERT_TRUE(
      receiver->Post(TransferId{2}, TestSecret(), dst.PostViews(Ids({1})), Far(), got.Callback())
          .ok());
  auto h = sender->StartTransfer(TransferId{2}, TestSecret(), endpoint, 2, Far());
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({1}))).ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, Ids({1}))).ok());
  ASSERT_TRUE((*h)->Finish("").ok());
  EXPECT_TRUE(WaitBounded(**h).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok()) << got.status();
  EXPECT_TRUE(LandedExactly(src, Ids({1}), dst, Ids({1}), 2, 2, kBackground));
}

TEST_P(TransportTest, ManyConcurrentTransfersShareOneSender) {
  constexpr int kTransfers = 24, kLayers = 6, kBlocks = 4, kThreads = 4;
  constexpr size_t kBlockBytes = 3000;  // not a power of two
  auto receiver = NewReceiver();
  auto sender = NewSender();
  std::vector<std::unique_ptr<KvArena>> srcs, dsts;
  std::vector<std::unique_ptr<RecvResult>> results;
  for (int i = 0; i < kTransfers; ++i) {
    srcs.push_back(std::make_unique<KvArena>(kLayers, kBlocks, kBlockBytes));
    srcs.back()->FillRandom(100 + i);
    dsts.push_back(std::make_unique<KvArena>(kLayers, kBlocks, kBlockBytes));
    dsts.back()->Fill(kBackground);
    results.push_back(std::make_unique<RecvResult>());
  }
  // Half posted before the data, half after it started.
  for (int i = 0; i < kTransfers; i += 2) {
    ASSERT_TRUE(receiver
                    ->Post(TransferId{1000u + i}, TestSecret(), dsts[i]->PostViews(Ids({3, 1, 2})),
                           Far(), results[i]->Callback())
                    .ok());
  }
  std::vector<absl::Status> statuses(kTransfers, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      std::vector<std::unique_ptr<KvSendHandle>> handles;
      for (int i = th; i < kTransfers; i += kThreads) {
        auto h = sender->StartTransfer(TransferId{1000u + i}, TestSecret(), receiver->endpoint(),
                                       kLayers, Far());
        if (!h.ok()) {
          statuses[i] = h.status();
          handles.push_back(nullptr);
          continue;
        }
        handles.push_back(std::move(*h));
      }
      // Interleave the layers of this thread's transfers.
      for (int l = 0; l < kLayers; ++l) {
        int k = 0;
        for (int i = th; i < kTransfers; i += kThreads, ++k) {
          if (handles[k])
            handles[k]->SendLayer(l, srcs[i]->SendViews(l, Ids({0, 1, 2}))).IgnoreError();
        }
      }
      int k = 0;
      for (int i = th; i < kTransfers; i += kThreads, ++k) {
        if (!handles[k]) continue;
        handles[k]->Finish(absl::StrCat("t", i)).IgnoreError();
      }
      k = 0;
      for (int i = th; i < kTransfers; i += kThreads, ++k) {
        if (handles[k]) statuses[i] = WaitBounded(*handles[k]);
      }
    });
  }
  for (int i = 1; i < kTransfers; i += 2) {
    ASSERT_TRUE(receiver
                    ->Post(TransferId{1000u + i}, TestSecret(), dsts[i]->PostViews(Ids({3, 1, 2})),
                           Far(), results[i]->Callback())
                    .ok());
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kTransfers; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    ASSERT_TRUE(results[i]->Wait());
    EXPECT_TRUE(results[i]->status().ok()) << i << ": " << results[i]->status();
    EXPECT_EQ(results[i]->trailer(), absl::StrCat("t", i));
    EXPECT_TRUE(LandedExactly(*srcs[i], Ids({0, 1, 2}), *dsts[i], Ids({3, 1, 2}), kLayers, kBlocks,
                              kBackground))
        << "transfer " << i;
  }
  EXPECT_EQ(sender->stats().transfers_ok, kTransfers);
  EXPECT_EQ(receiver->stats().transfers_ok, kTransfers);
}

TEST_P(TransportTest, CallerMistakesAreErrorsNotCrashes) {
  KvArena src(2, 2, 1024);
  KvArena dst(2, 2, 1024);
  auto receiver = NewReceiver();
  auto sender = NewSender();
  RecvResult got;
  EXPECT_EQ(receiver->Post(TransferId{1}, TestSecret(), {}, Far(), got.Callback()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(receiver->Post(TransferId{1}, TestSecret(), {{}}, Far(), got.Callback()).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(
      receiver->Post(TransferId{1}, TestSecret(), dst.PostViews(Ids({0})), Far(), got.Callback())
          .ok());
  RecvResult dup;
  EXPECT_EQ(
      receiver->Post(TransferId{1}, TestSecret(), dst.PostViews(Ids({1})), Far(), dup.Callback())
          .code(),
      absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(receiver->Cancel(TransferId{99}).code(), absl::StatusCode::kNotFound);

  EXPECT_FALSE(
      sender->StartTransfer(TransferId{1}, TestSecret(), receiver->endpoint(), 0, Far()).ok());
  EXPECT_FALSE(sender->StartTransfer(TransferId{1}, TestSecret(), "no-port-here", 2, Far()).ok());
  auto h = sender->StartTransfer(TransferId{1}, TestSecret(), receiver->endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ((*h)->SendLayer(2, src.SendViews(0, Ids({0}))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*h)->SendLayer(-1, src.SendViews(0, Ids({0}))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*h)->SendLayer(0, {}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, Ids({0}))).ok());
  EXPECT_EQ((*h)->SendLayer(0, src.SendViews(0, Ids({0}))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*h)->Finish("").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, Ids({0}))).ok());
  ASSERT_TRUE((*h)->Finish("").ok());
  EXPECT_EQ((*h)->Finish("").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(WaitBounded(**h).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok());
  EXPECT_FALSE(dup.HasRun());
}

// Both backends check the secret, in either order, and a refused sender
// does not hurt the genuine one.
TEST_P(TransportTest, ASenderWithoutTheSecretIsRefused) {
  const TransferSecret secret = TransferSecret::Random();
  for (bool post_first : {true, false}) {
    SCOPED_TRACE(post_first ? "post first" : "send first");
    const TransferId xfer{post_first ? 71u : 72u};
    KvArena src(2, 1, 256), dst(2, 1, 256);
    src.FillRandom(xfer.value);
    auto receiver = NewReceiver();
    auto forger = NewSender();
    auto genuine = NewSender();
    RecvResult got;
    if (post_first) {
      ASSERT_TRUE(
          receiver->Post(xfer, secret, dst.PostViews(Ids({0})), Far(), got.Callback()).ok());
    }
    auto forged =
        forger->StartTransfer(xfer, TransferSecret::Random(), receiver->endpoint(), 2, Far());
    ASSERT_TRUE(forged.ok());
    auto h = genuine->StartTransfer(xfer, secret, receiver->endpoint(), 2, Far());
    ASSERT_TRUE(h.ok());
    for (int l = 0; l < 2; ++l) {
      // (The forged transfer may already have been refused.)
      (*forged)->SendLayer(l, src.SendViews(l, Ids({0}))).IgnoreError();
      ASSERT_TRUE((*h)->SendLayer(l, src.SendViews(l, Ids({0}))).ok());
    }
    (*forged)->Finish("forged").IgnoreError();
    ASSERT_TRUE((*h)->Finish("genuine").ok());
    if (!post_first) {
      ASSERT_TRUE(
          receiver->Post(xfer, secret, dst.PostViews(Ids({0})), Far(), got.Callback()).ok());
    }
    // Refused: wrong secret, or, if its Begin came after the genuine transfer
    // ended, as a replay.
    absl::Status refused = WaitBounded(**forged);
    EXPECT_TRUE(absl::IsPermissionDenied(refused) || absl::IsAlreadyExists(refused)) << refused;
    EXPECT_TRUE(WaitBounded(**h).ok());
    ASSERT_TRUE(got.Wait());
    EXPECT_TRUE(got.status().ok()) << got.status();
    EXPECT_EQ(got.trailer(), "genuine");
    for (int l = 0; l < 2; ++l) EXPECT_EQ(std::memcmp(dst.Block(l, 0), src.Block(l, 0), 256), 0);
    EXPECT_EQ(receiver->stats().begins_refused, 1);
  }
}

TEST_P(TransportTest, UnknownPeerIsUnavailable) {
  auto sender = NewSender();
  std::string peer;
  if (GetParam() == Backend::kTcp) {
    // A port that was just free: nothing listens there.
    auto r = NewReceiver();
    peer = r->endpoint();
    r.reset();
  } else {
    peer = "loopback:nobody";
  }
  auto h = sender->StartTransfer(TransferId{1}, TestSecret(), peer, 1, Far());
  absl::Status s = h.ok() ? WaitBounded(**h) : h.status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
}

INSTANTIATE_TEST_SUITE_P(Backends, TransportTest,
                         ::testing::Values(Backend::kTcp, Backend::kLoopback),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kTcp ? "Tcp" : "Loopback";
                         });

}  // namespace
}  // namespace pdserve::transport
