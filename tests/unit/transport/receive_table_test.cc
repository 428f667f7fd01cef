// The receiver-side state machine shared by every backend, driven directly.
#include "transport/receive_table.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/test_util.h"

namespace pdserve::transport::internal {
namespace {

using testing::Far;
using testing::KvArena;
using testing::RecvResult;
using testing::TestSecret;

struct Sent {
  LinkId link;
  uint64_t xfer;
  ReplyKind kind;
  absl::StatusCode code;
};

class FakeSink : public ReplySink {
 public:
  void Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    sent_.push_back({link, xfer.value, kind, status.code()});
  }
  void WakeForDeadline() override {}
  std::vector<Sent> Take() {
    absl::MutexLock lock(&mu_);
    return std::exchange(sent_, {});
  }

 private:
  absl::Mutex mu_;
  std::vector<Sent> sent_;
};

class ReceiveTableTest : public ::testing::Test {
 protected:
  ReceiveTableTest() : table_(&sink_, options(), &counters_) {}
  static ReceiveTableOptions options() {
    ReceiveTableOptions o;
    o.max_unposted = 2;
    return o;
  }
  std::vector<uint64_t> Sizes(int n, uint64_t bytes) { return std::vector<uint64_t>(n, bytes); }
  // A sender's Begin, its tag keyed by secret.
  void Announce(LinkId link, TransferId xfer, int32_t n_layers, Deadline deadline,
                const TransferSecret& secret = TestSecret()) {
    BeginProof proof;
    proof.budget_ms = 1234;
    proof.tag = BeginTag(secret, xfer, static_cast<uint32_t>(n_layers), proof.budget_ms);
    table_.Announce(link, xfer, n_layers, deadline, proof);
  }
  bool Trailer(LinkId link, TransferId xfer, std::string trailer, const absl::Status& status,
               const TransferSecret& secret = TestSecret()) {
    AuthTag tag = TrailerTag(secret, xfer, trailer);
    return table_.Trailer(link, xfer, std::move(trailer), tag, status);
  }

  FakeSink sink_;
  TransferCounters counters_;
  ReceiveTable table_;
  KvArena arena_{2, 4, 64};
};

TEST_F(ReceiveTableTest, ReadyOnceBothSidesArrivedInEitherOrder) {
  RecvResult a, b;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), a.Callback()).ok());
  EXPECT_TRUE(sink_.Take().empty());
  Announce(10, TransferId{1}, 2, Far());
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, ReplyKind::kReady);
  EXPECT_EQ(sent[0].link, 10u);

  Announce(11, TransferId{2}, 2, Far());
  EXPECT_TRUE(sink_.Take().empty());
  ASSERT_TRUE(
      table_.Post(TransferId{2}, TestSecret(), arena_.PostViews({1}), Far(), b.Callback()).ok());
  sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, ReplyKind::kReady);
  EXPECT_EQ(sent[0].link, 11u);
}

TEST_F(ReceiveTableTest, FullTransferCompletesWithTrailerAndAck) {
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({2, 3}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  std::string error;
  for (int layer : {1, 0}) {
    ASSERT_EQ(table_.BeginLayer(5, TransferId{1}, layer, Sizes(2, 64), &error),
              LayerVerdict::kWrite);
    const std::vector<BlockView>* views = table_.AcquireWrite(TransferId{1}, layer);
    ASSERT_NE(views, nullptr);
    EXPECT_EQ(views->size(), 2u);
    EXPECT_EQ((*views)[0].data, arena_.Block(layer, 2));
    table_.ReleaseWrite(TransferId{1});
    table_.EndLayer(5, TransferId{1}, layer, absl::OkStatus());
  }
  EXPECT_FALSE(r.HasRun());
  ASSERT_TRUE(Trailer(5, TransferId{1}, "tok", absl::OkStatus()));
  ASSERT_TRUE(r.HasRun());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(r.trailer(), "tok");
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[1].kind, ReplyKind::kAck);
  EXPECT_EQ(counters_.Snapshot().bytes, 2 * 2 * 64);
  // Gone: more data for it is a protocol error.
  EXPECT_EQ(table_.BeginLayer(5, TransferId{1}, 0, Sizes(2, 64), &error),
            LayerVerdict::kProtocolError);
}

TEST_F(ReceiveTableTest, TrailerBeforeAllLayersIsAnError) {
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  ASSERT_TRUE(Trailer(5, TransferId{1}, "", absl::OkStatus()));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ReceiveTableTest, DataBeforeReadyOrFromAnotherLinkIsAProtocolError) {
  std::string error;
  Announce(5, TransferId{1}, 2, Far());
  EXPECT_EQ(table_.BeginLayer(5, TransferId{1}, 0, Sizes(1, 64), &error),
            LayerVerdict::kProtocolError);
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  EXPECT_EQ(table_.BeginLayer(6, TransferId{1}, 0, Sizes(1, 64), &error),
            LayerVerdict::kProtocolError);
  EXPECT_FALSE(Trailer(6, TransferId{1}, "", absl::OkStatus()));
  EXPECT_FALSE(r.HasRun());
}

TEST_F(ReceiveTableTest, DuplicateAnnouncementOnlyHurtsTheNewcomer) {
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  Announce(6, TransferId{1}, 2, Far());
  table_.SenderAborted(6, TransferId{1});
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[1].link, 6u);
  EXPECT_EQ(sent[1].kind, ReplyKind::kNack);
  EXPECT_EQ(sent[1].code, absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(r.HasRun());
}

TEST_F(ReceiveTableTest, AfterCancelLateDataIsDiscardedUntilTheSendersLastFrame) {
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  ASSERT_TRUE(table_.Cancel(TransferId{1}).ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  std::string error;
  EXPECT_EQ(table_.BeginLayer(5, TransferId{1}, 0, Sizes(1, 64), &error), LayerVerdict::kDiscard);
  EXPECT_EQ(table_.AcquireWrite(TransferId{1}, 0), nullptr);
  EXPECT_EQ(table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), nullptr).code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(Trailer(5, TransferId{1}, "", absl::OkStatus()));  // ends the tombstone
  EXPECT_EQ(table_.BeginLayer(5, TransferId{1}, 1, Sizes(1, 64), &error),
            LayerVerdict::kProtocolError);
  EXPECT_EQ(r.calls(), 1);
}

TEST_F(ReceiveTableTest, CancelWaitsForAWriteInProgress) {
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  std::string error;
  ASSERT_EQ(table_.BeginLayer(5, TransferId{1}, 0, Sizes(1, 64), &error), LayerVerdict::kWrite);
  ASSERT_NE(table_.AcquireWrite(TransferId{1}, 0), nullptr);
  std::atomic<bool> released{false};
  std::atomic<bool> released_before_done{false};
  std::thread canceller([&] {
    table_.Cancel(TransferId{1}).IgnoreError();
    released_before_done = released.load();
  });
  absl::SleepFor(absl::Milliseconds(50));  // give Cancel a chance to run early (it must not)
  EXPECT_FALSE(r.HasRun());
  released = true;
  table_.ReleaseWrite(TransferId{1});
  canceller.join();
  EXPECT_TRUE(released_before_done.load());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(ReceiveTableTest, DeadlinesExpireAnnouncementsAndPosts) {
  Deadline now = MonoClock::now();
  RecvResult r;
  ASSERT_TRUE(table_
                  .Post(TransferId{1}, TestSecret(), arena_.PostViews({0}),
                        now + std::chrono::seconds(1), r.Callback())
                  .ok());
  Announce(7, TransferId{2}, 2, now + std::chrono::seconds(2));
  EXPECT_EQ(table_.ExpireDue(now), now + std::chrono::seconds(1));
  EXPECT_EQ(table_.ExpireDue(now + std::chrono::milliseconds(1500)), now + std::chrono::seconds(2));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  // Both outcomes are remembered for a while (for the late side), then dropped.
  EXPECT_NE(table_.ExpireDue(now + std::chrono::seconds(3)), Deadline::max());
  EXPECT_EQ(table_.ExpireDue(now + std::chrono::hours(1)), Deadline::max());
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].link, 7u);
  EXPECT_EQ(sent[0].code, absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(counters_.Snapshot().failures(absl::StatusCode::kDeadlineExceeded), 1);
}

TEST_F(ReceiveTableTest, TheLateSideLearnsTheOutcomeAtOnce) {
  // The receiver cancels before the sender shows up: the sender is told.
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  ASSERT_TRUE(table_.Cancel(TransferId{1}).ok());
  Announce(5, TransferId{1}, 2, Far());
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, ReplyKind::kNack);
  EXPECT_EQ(sent[0].code, absl::StatusCode::kCancelled);
  // The sender aborts before the Post: the Post fails.
  Announce(5, TransferId{2}, 2, Far());
  table_.SenderAborted(5, TransferId{2});
  EXPECT_EQ(table_.Post(TransferId{2}, TestSecret(), arena_.PostViews({0}), Far(), nullptr).code(),
            absl::StatusCode::kAborted);
  // Once told, the id is free again.
  RecvResult again;
  EXPECT_TRUE(
      table_.Post(TransferId{2}, TestSecret(), arena_.PostViews({0}), Far(), again.Callback())
          .ok());
}

TEST_F(ReceiveTableTest, ASenderDeadlineAbortIsDeadlineExceededHereToo) {
  // The sender's deadline fired first and it said so: the receiver reports
  // the same code, not a bare "aborted", even though its own deadline is far.
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  table_.SenderAborted(5, TransferId{1}, absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(r.HasRun());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "0 of 2 layers")) << r.status();
  // Any other reason reads as an abort.
  RecvResult c;
  ASSERT_TRUE(
      table_.Post(TransferId{2}, TestSecret(), arena_.PostViews({0}), Far(), c.Callback()).ok());
  Announce(5, TransferId{2}, 2, Far());
  table_.SenderAborted(5, TransferId{2}, absl::StatusCode::kCancelled);
  ASSERT_TRUE(c.HasRun());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kAborted) << c.status();
}

TEST_F(ReceiveTableTest, UnpostedAnnouncementsAreCapped) {
  Announce(1, TransferId{1}, 2, Far());
  Announce(1, TransferId{2}, 2, Far());
  Announce(1, TransferId{3}, 2, Far());
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].xfer, 3u);
  EXPECT_EQ(sent[0].code, absl::StatusCode::kResourceExhausted);
  // A Post frees a slot.
  ASSERT_TRUE(table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), nullptr).ok());
  Announce(1, TransferId{3}, 2, Far());
  EXPECT_TRUE(sink_.Take().size() == 1);  // Ready for 1 only
}

TEST_F(ReceiveTableTest, APostRefusesForgedAnnouncementsAndTakesTheGenuineOne) {
  const TransferSecret forged = TransferSecret::Random();
  // (This fixture holds at most 2 unposted announcements.)
  Announce(5, TransferId{1}, 2, Far(), forged);
  Announce(6, TransferId{1}, 2, Far());  // genuine
  EXPECT_TRUE(sink_.Take().empty());     // nothing can be verified yet
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(7, TransferId{1}, 2, Far());  // a copy of the genuine one, after the Post
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 3u);
  EXPECT_EQ(sent[0].link, 5u);
  EXPECT_EQ(sent[0].code, absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(sent[1].link, 6u);
  EXPECT_EQ(sent[1].kind, ReplyKind::kReady);
  EXPECT_EQ(sent[2].link, 7u);
  EXPECT_EQ(sent[2].code, absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(table_.LinkVerified(6));
  EXPECT_FALSE(table_.LinkVerified(5));
  EXPECT_EQ(table_.unposted(), 0);
  EXPECT_EQ(counters_.Snapshot().begins_refused, 2);
}

TEST_F(ReceiveTableTest, AnAnnouncementAfterThePostIsVerifiedAtOnce) {
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far(), TransferSecret::Random());
  Announce(6, TransferId{1}, 2, Far());
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].link, 5u);
  EXPECT_EQ(sent[0].code, absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(sent[1].link, 6u);
  EXPECT_EQ(sent[1].kind, ReplyKind::kReady);
  EXPECT_FALSE(r.HasRun());
}

TEST_F(ReceiveTableTest, AForgedAbortBeforeThePostDoesNotFailIt) {
  Announce(5, TransferId{1}, 2, Far(), TransferSecret::Random());
  table_.SenderAborted(5, TransferId{1});
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(6, TransferId{1}, 2, Far());
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].link, 6u);
  EXPECT_EQ(sent[0].kind, ReplyKind::kReady);
  EXPECT_FALSE(r.HasRun());
}

TEST_F(ReceiveTableTest, AClosedLinksAnnouncementsNoLongerCount) {
  // max_unposted is 2 here.
  Announce(1, TransferId{1}, 2, Far(), TransferSecret::Random());
  Announce(1, TransferId{2}, 2, Far(), TransferSecret::Random());
  EXPECT_EQ(table_.unposted(), 2);
  table_.LinkClosed(1, absl::UnavailableError("gone"));
  EXPECT_EQ(table_.unposted(), 0);
  Announce(2, TransferId{3}, 2, Far());
  Announce(2, TransferId{4}, 2, Far());
  EXPECT_TRUE(sink_.Take().empty());  // both accepted
}

TEST_F(ReceiveTableTest, AFinishedTransfersBeginIsRefusedAsAReplay) {
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  ASSERT_TRUE(table_.Cancel(TransferId{1}).ok());
  ASSERT_TRUE(Trailer(5, TransferId{1}, "", absl::OkStatus()));  // the sender is done with it
  sink_.Take();
  Announce(6, TransferId{1}, 2, Far());
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].code, absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(table_.unposted(), 0);
}

TEST_F(ReceiveTableTest, AWrongTrailerTagFailsTheTransfer) {
  KvArena arena(1, 1, 64);
  RecvResult r;
  ASSERT_TRUE(
      table_.Post(TransferId{2}, TestSecret(), arena.PostViews({0}), Far(), r.Callback()).ok());
  Announce(5, TransferId{2}, 1, Far());
  std::string error;
  ASSERT_EQ(table_.BeginLayer(5, TransferId{2}, 0, Sizes(1, 64), &error), LayerVerdict::kWrite);
  ASSERT_NE(table_.AcquireWrite(TransferId{2}, 0), nullptr);
  table_.ReleaseWrite(TransferId{2});
  table_.EndLayer(5, TransferId{2}, 0, absl::OkStatus());
  ASSERT_TRUE(Trailer(5, TransferId{2}, "token", absl::OkStatus(), TransferSecret::Random()));
  ASSERT_TRUE(r.HasRun());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_EQ(r.trailer(), "");
}

TEST_F(ReceiveTableTest, LinkLossAndChecksumFailuresFailThePost) {
  RecvResult a, b;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), a.Callback()).ok());
  ASSERT_TRUE(
      table_.Post(TransferId{2}, TestSecret(), arena_.PostViews({1}), Far(), b.Callback()).ok());
  Announce(5, TransferId{1}, 2, Far());
  Announce(6, TransferId{2}, 2, Far());
  sink_.Take();
  std::string error;
  ASSERT_EQ(table_.BeginLayer(6, TransferId{2}, 0, Sizes(1, 64), &error), LayerVerdict::kWrite);
  table_.EndLayer(6, TransferId{2}, 0, absl::DataLossError("crc"));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kDataLoss);
  table_.LinkClosed(5, absl::UnavailableError("gone"));
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable);
  auto sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);  // the Nack to link 6; nothing to the dead link
  EXPECT_EQ(sent[0].link, 6u);
}

TEST_F(ReceiveTableTest, ShutdownFailsEveryPost) {
  RecvResult a;
  ASSERT_TRUE(
      table_.Post(TransferId{1}, TestSecret(), arena_.PostViews({0}), Far(), a.Callback()).ok());
  table_.Shutdown(absl::CancelledError("bye"));
  EXPECT_EQ(a.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(table_.Post(TransferId{2}, TestSecret(), arena_.PostViews({0}), Far(), nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace pdserve::transport::internal
