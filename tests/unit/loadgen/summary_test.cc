#include "loadgen/summary.h"

#include <cmath>

#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

constexpr int64_t kMs = 1000000;

// A successful request sent at `send_ms` (run start 0) whose chunks arrive at
// the given times and whose stream ends at `end_ms`.
RequestOutcome Outcome(int64_t send_ms, std::vector<int64_t> chunk_ms, int64_t end_ms,
                       int32_t tokens) {
  RequestOutcome o;
  o.send_ns = send_ms * kMs;
  for (int64_t c : chunk_ms) o.chunk_ns.push_back(c * kMs);
  o.end_ns = end_ms * kMs;
  o.output_tokens = tokens;
  o.success = true;
  return o;
}

RequestInput Input(int32_t input_tokens, int32_t max_tokens) {
  RequestInput in;
  in.id = "x";
  in.input_tokens = input_tokens;
  in.max_tokens = max_tokens;
  return in;
}

TEST(MakeRecordTest, TtftTpotItlAndE2eFromChunkTimes) {
  const RequestRecord r =
      MakeRecord(3, Input(32, 4), Outcome(100, {110, 120, 140, 145}, 145, 4), 0);
  EXPECT_TRUE(r.success);
  EXPECT_DOUBLE_EQ(r.start_offset_s, 0.1);
  EXPECT_DOUBLE_EQ(r.ttft_ms, 10);
  EXPECT_DOUBLE_EQ(r.e2e_ms, 45);
  EXPECT_DOUBLE_EQ(r.tpot_ms, (45.0 - 10.0) / 3.0);
  EXPECT_EQ(r.itl_ms, (std::vector<double>{10, 20, 5}));
  EXPECT_EQ(r.input_tokens, 32);  // planned: no usage given
  EXPECT_FALSE(r.input_from_usage);
}

TEST(MakeRecordTest, UsageCountsWinAndOneTokenHasNoTpot) {
  RequestOutcome o = Outcome(0, {30}, 30, 1);
  o.input_tokens = 33;
  const RequestRecord r = MakeRecord(0, Input(32, 1), o, 0);
  EXPECT_EQ(r.input_tokens, 33);
  EXPECT_TRUE(r.input_from_usage);
  EXPECT_TRUE(std::isnan(r.tpot_ms));
  EXPECT_TRUE(r.itl_ms.empty());
}

// "0 tokens cached" and "the target did not say" must stay apart.
TEST(SummarizeTest, CountsOnlyReportedPrefixCacheFigures) {
  RequestOutcome reported = Outcome(0, {10, 20}, 20, 2);
  reported.cached_input_tokens_reported = true;  // a real 0
  const RequestOutcome silent = Outcome(0, {10, 20}, 20, 2);
  const std::vector<RequestRecord> records = {MakeRecord(0, Input(8, 2), reported, 0),
                                              MakeRecord(1, Input(8, 2), silent, 0)};
  const RunSummary s = Summarize(RunConfig{}, records, 1.0, {50}, Slo{});
  EXPECT_EQ(s.cached_input_tokens, 0);
  EXPECT_EQ(s.cached_reported, 1);
}

TEST(MakeRecordTest, SuccessWithoutOutputIsAFailure) {
  const RequestRecord r = MakeRecord(0, Input(8, 8), Outcome(0, {}, 5, 0), 0);
  EXPECT_FALSE(r.success);
  EXPECT_EQ(r.error, "no output");
}

TEST(SummarizeTest, CountsThroughputAndGoodput) {
  std::vector<RequestRecord> records;
  // ttft 10/20/30/40 ms, 5 tokens each over 2 s of run time.
  for (int i = 0; i < 4; ++i) {
    const int64_t t = 10 * (i + 1);
    records.push_back(
        MakeRecord(i, Input(100, 5), Outcome(0, {t, t + 5, t + 10, t + 15, t + 20}, t + 20, 5), 0));
  }
  RequestOutcome failed;
  failed.error = "boom";
  records.push_back(MakeRecord(4, Input(100, 5), failed, 0));
  RequestOutcome cancelled;
  cancelled.cancelled = true;
  cancelled.error = "cancelled";
  records.push_back(MakeRecord(5, Input(100, 5), cancelled, 0));
  records.push_back(NotSentRecord(6, Input(100, 5)));
  records.push_back(NotSentRecord(7, Input(100, 5)));

  Slo slo;
  slo.ttft_ms = 25;  // meets: the first two
  const RunSummary s = Summarize({}, records, 2.0, {50, 99}, slo);
  EXPECT_EQ(s.num_prompts, 8);
  EXPECT_EQ(s.completed, 4);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.cancelled, 1);
  EXPECT_EQ(s.not_sent, 2);
  EXPECT_EQ(s.total_output_tokens, 20);
  EXPECT_EQ(s.total_input_tokens, 400);
  EXPECT_DOUBLE_EQ(s.request_throughput, 2.0);
  EXPECT_DOUBLE_EQ(s.output_throughput, 10.0);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 210.0);
  EXPECT_EQ(s.good_requests, 2);
  EXPECT_DOUBLE_EQ(s.goodput, 1.0);
  EXPECT_DOUBLE_EQ(s.slo_attainment, 2.0 / 8.0);
  EXPECT_LE(s.goodput, s.request_throughput);
  EXPECT_DOUBLE_EQ(s.ttft_ms.mean, 25);
  EXPECT_DOUBLE_EQ(s.ttft_ms.At(50), 25);
  EXPECT_DOUBLE_EQ(s.tpot_ms.At(50), 5);
  EXPECT_EQ(s.itl_ms.count, 16u);
  EXPECT_EQ(s.errors, (std::vector<std::string>{"boom"}));
}

TEST(SummarizeTest, WarmupAndCooldownWindowsLeaveRequestsOut) {
  // A 10 s run; requests sent at 0.5, 2, 5 and 8 s, each 1 s long (100 ms TTFT).
  std::vector<RequestRecord> records;
  const int64_t sends_ms[] = {500, 2000, 5000, 8000};
  for (int i = 0; i < 4; ++i) {
    const int64_t t = sends_ms[i];
    records.push_back(MakeRecord(
        i, Input(100, 3), Outcome(t, {t + 100 * (i + 1), t + 500, t + 1000}, t + 1000, 3), 0));
  }
  RequestOutcome failed;  // sent at 9.5 s: in the cool-down window, left out
  failed.send_ns = 9500 * kMs;
  failed.error = "late";
  records.push_back(MakeRecord(4, Input(100, 3), failed, 0));
  RunConfig config;
  config.warmup_window_s = 1.0;    // leaves out the request sent at 0.5 s
  config.cooldown_window_s = 1.5;  // window [1, 8.5]: the one ending at 9 s is out
  Slo slo;
  slo.ttft_ms = 250;  // the 2 s request (200 ms) meets it; the 5 s one (300 ms) does not
  const RunSummary s = Summarize(config, records, 10.0, {50}, slo);
  EXPECT_EQ(s.excluded, 3);
  EXPECT_EQ(s.completed, 2);
  EXPECT_EQ(s.failed, 0);
  EXPECT_DOUBLE_EQ(s.window_s, 7.5);
  EXPECT_DOUBLE_EQ(s.request_throughput, 2 / 7.5);
  EXPECT_DOUBLE_EQ(s.output_throughput, 6 / 7.5);
  EXPECT_EQ(s.good_requests, 1);
  EXPECT_DOUBLE_EQ(s.slo_attainment, 0.5);
  EXPECT_DOUBLE_EQ(s.ttft_ms.mean, 250);

  // No window: everything counts, over the whole run.
  const RunSummary all = Summarize({}, records, 10.0, {50}, slo);
  EXPECT_EQ(all.excluded, 0);
  EXPECT_EQ(all.completed, 4);
  EXPECT_EQ(all.failed, 1);
  EXPECT_DOUBLE_EQ(all.request_throughput, 0.4);
}

TEST(SummarizeTest, TightTpotSloCutsGoodput) {
  std::vector<RequestRecord> records = {
      MakeRecord(0, Input(1, 3), Outcome(0, {10, 12, 14}, 14, 3), 0),   // tpot 2
      MakeRecord(1, Input(1, 3), Outcome(0, {10, 30, 50}, 50, 3), 0)};  // tpot 20
  Slo slo;
  slo.tpot_ms = 10;
  const RunSummary s = Summarize({}, records, 1.0, {50}, slo);
  EXPECT_EQ(s.good_requests, 1);
  EXPECT_DOUBLE_EQ(s.goodput, 1.0);
  EXPECT_DOUBLE_EQ(s.request_throughput, 2.0);
}

TEST(SummarizeTest, StagesInPipelineOrderThenUnknownOnes) {
  RequestOutcome o = Outcome(0, {5, 6}, 6, 2);
  o.stages = {{"decode.generate", 3 * kMs}, {"zz.custom", kMs}, {"router.queue", 2 * kMs}};
  const RunSummary s = Summarize({}, {MakeRecord(0, Input(1, 2), o, 0)}, 1.0, {50}, Slo{});
  ASSERT_EQ(s.stages.size(), 3u);
  EXPECT_EQ(s.stages[0].stage, "router.queue");
  EXPECT_DOUBLE_EQ(s.stages[0].p50_ms, 2);
  EXPECT_EQ(s.stages[1].stage, "decode.generate");
  EXPECT_EQ(s.stages[2].stage, "zz.custom");
  EXPECT_FALSE(s.has_slo);
}

}  // namespace
}  // namespace pdserve::loadgen
