#include "loadgen/runner.h"

#include <deque>
#include <limits>
#include <thread>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"

namespace pdserve::loadgen {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Answers each request on its own worker thread after a short pause with
// `tokens` chunks, or (hang) holds every request until CancelAll.
class FakeClient : public LoadClient {
 public:
  explicit FakeClient(bool hang) : hang_(hang), worker_([this] { Work(); }) {}
  ~FakeClient() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    worker_.join();
  }
  std::string kind() const override { return "fake"; }
  bool accepts_token_ids() const override { return true; }
  absl::StatusOr<ModelDescription> GetModelInfo(absl::Duration) override {
    return ModelDescription{};
  }
  void Send(const RequestInput& input, DoneCallback done) override {
    absl::MutexLock lock(&mu_);
    ids_.push_back(input.id);
    pending_.push_back({MonoNowNs(), std::move(done)});
    max_in_flight_ = std::max(max_in_flight_, static_cast<int>(pending_.size()));
  }
  void CancelAll() override {
    std::deque<Pending> cut;
    {
      absl::MutexLock lock(&mu_);
      cut.swap(pending_);
    }
    for (Pending& p : cut) {
      RequestOutcome o;
      o.send_ns = p.send_ns;
      o.end_ns = MonoNowNs();
      o.cancelled = true;
      o.error = "cancelled";
      p.done(std::move(o));
    }
  }
  int max_in_flight() {
    absl::MutexLock lock(&mu_);
    return max_in_flight_;
  }
  std::vector<std::string> ids() {
    absl::MutexLock lock(&mu_);
    return ids_;
  }

 private:
  struct Pending {
    int64_t send_ns;
    DoneCallback done;
  };
  void Work() {
    for (;;) {
      Pending p;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](FakeClient* c) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return c->stop_ || (!c->hang_ && !c->pending_.empty());
            },
            this));
        if (stop_) return;
        p = std::move(pending_.front());
        pending_.pop_front();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      RequestOutcome o;
      o.send_ns = p.send_ns;
      for (int i = 0; i < 4; ++i) o.chunk_ns.push_back(MonoNowNs());
      o.end_ns = MonoNowNs();
      o.output_tokens = 4;
      o.success = true;
      p.done(std::move(o));
    }
  }

  const bool hang_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);
  int max_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> ids_ ABSL_GUARDED_BY(mu_);
  std::thread worker_;
};

std::vector<RequestInput> Prompts(int n) {
  std::vector<RequestInput> out(n);
  for (int i = 0; i < n; ++i) {
    out[i].id = "p" + std::to_string(i);
    out[i].input_tokens = 10;
    out[i].max_tokens = 4;
  }
  return out;
}

TEST(RunLoadTest, EveryPromptGetsARecordInOrder) {
  FakeClient client(/*hang=*/false);
  RunOptions options;
  options.config.request_rate = kInf;
  options.id_prefix = "r0-";
  auto result = RunLoad(&client, Prompts(20), options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->records.size(), 20u);
  for (int i = 0; i < 20; ++i) {
    const RequestRecord& r = result->records[i];
    EXPECT_EQ(r.index, i);
    EXPECT_EQ(r.id, "r0-p" + std::to_string(i));
    EXPECT_TRUE(r.success) << r.error;
    EXPECT_EQ(r.output_tokens, 4);
    EXPECT_GE(r.start_offset_s, 0.0);
  }
  EXPECT_GT(result->duration_s, 0.0);
}

TEST(RunLoadTest, ClosedLoopNeverExceedsMaxConcurrency) {
  FakeClient client(/*hang=*/false);
  RunOptions options;
  options.config.request_rate = kInf;
  options.config.max_concurrency = 3;
  auto result = RunLoad(&client, Prompts(30), options);
  ASSERT_TRUE(result.ok()) << result.status();
  int ok = 0;
  for (const RequestRecord& r : result->records) ok += r.success;
  EXPECT_EQ(ok, 30);
  EXPECT_LE(client.max_in_flight(), 3);
  EXPECT_GE(client.max_in_flight(), 1);
}

TEST(RunLoadTest, OpenLoopWithRateSendsInScheduleOrder) {
  FakeClient client(/*hang=*/false);
  RunOptions options;
  options.config.request_rate = 200;
  auto result = RunLoad(&client, Prompts(10), options);
  ASSERT_TRUE(result.ok());
  for (size_t i = 1; i < result->records.size(); ++i) {
    EXPECT_GE(result->records[i].start_offset_s, result->records[i - 1].start_offset_s);
    EXPECT_TRUE(result->records[i].success);
  }
}

// Every prompt of a closed loop is due at the start; with one slot, prompt
// i is sent only after i others each took the fake's 2 ms, so it is at least
// 2*i ms late: the dispatch delay shows the load generator as the bottleneck.
TEST(RunLoadTest, DispatchDelayIsHowLateEachSendWas) {
  FakeClient client(/*hang=*/false);
  RunOptions options;
  options.config.request_rate = kInf;
  options.config.max_concurrency = 1;
  auto result = RunLoad(&client, Prompts(6), options);
  ASSERT_TRUE(result.ok()) << result.status();
  for (int i = 0; i < 6; ++i) {
    EXPECT_GE(result->records[i].dispatch_delay_ms, 2.0 * i) << i;
  }
  const RunSummary s = Summarize(options.config, result->records, result->duration_s, {50}, Slo{});
  EXPECT_EQ(s.dispatch_delay_ms.count, 6u);
}

TEST(RunLoadTest, TimeBoundCancelsWhatIsInFlightAndDropsTheRest) {
  FakeClient client(/*hang=*/true);
  RunOptions options;
  options.config.request_rate = kInf;
  options.config.max_concurrency = 2;
  options.max_duration_s = 0.2;
  auto result = RunLoad(&client, Prompts(10), options);
  ASSERT_TRUE(result.ok()) << result.status();
  const RunSummary s = Summarize(options.config, result->records, result->duration_s, {50}, Slo{});
  EXPECT_EQ(s.cancelled, 2);
  EXPECT_EQ(s.not_sent, 8);
  EXPECT_EQ(s.completed, 0);
  EXPECT_EQ(s.failed, 0);
}

TEST(RunLoadTest, WarmupsAreSentFirstAndNotRecorded) {
  FakeClient client(/*hang=*/false);
  RunOptions options;
  options.config.request_rate = kInf;
  options.warmup_prompts = Prompts(3);
  auto result = RunLoad(&client, Prompts(5), options);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->records.size(), 5u);
  const std::vector<std::string> ids = client.ids();
  ASSERT_EQ(ids.size(), 8u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(ids[i], "warmup-" + std::to_string(i));
}

}  // namespace
}  // namespace pdserve::loadgen
