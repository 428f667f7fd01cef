#include "tracing/metrics.h"

#include <cmath>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/unit/tracing/exposition_parser.h"
#include "tracing/pdserve_metrics.h"
#include "tracing/prometheus_text.h"

namespace pdserve::tracing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

template <typename T>
T Unwrap(absl::StatusOr<T> value) {
  EXPECT_TRUE(value.ok()) << value.status();
  return *value;
}

TEST(PrometheusTextTest, FormatsValuesShortestRoundTrip) {
  EXPECT_EQ(FormatPrometheusValue(0), "0");
  EXPECT_EQ(FormatPrometheusValue(1), "1");
  EXPECT_EQ(FormatPrometheusValue(-2.5), "-2.5");
  EXPECT_EQ(FormatPrometheusValue(0.05), "0.05");
  EXPECT_EQ(FormatPrometheusValue(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatPrometheusValue(1e21), "1e+21");
  EXPECT_EQ(FormatPrometheusValue(123456789), "123456789");
  EXPECT_EQ(FormatPrometheusValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatPrometheusValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatPrometheusValue(NAN), "NaN");
}

TEST(PrometheusTextTest, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue(R"(a\b"c)"
                             "\n"
                             "d"),
            R"(a\\b\"c\nd)");
  // HELP keeps double quotes as they are.
  EXPECT_EQ(EscapeHelp(R"(say "hi" \ )"
                       "\n"
                       "bye"),
            R"(say "hi" \\ \nbye)");
}

TEST(PrometheusTextTest, ValidatesNames) {
  EXPECT_TRUE(IsValidMetricName("pdserve:stage_seconds"));
  EXPECT_TRUE(IsValidMetricName("_x1"));
  EXPECT_FALSE(IsValidMetricName("1x"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_TRUE(IsValidLabelName("finish_reason"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("__reserved"));
  EXPECT_FALSE(IsValidLabelName("9a"));
}

TEST(MetricsRegistryTest, RendersExactExposition) {
  MetricsRegistry registry;
  CounterFamily* errors = Unwrap(registry.AddCounter(
      "pdserve:request_errors_total", "Failed requests.\nBy kind \\ reason.", {"kind"}));
  errors->Labels({"deadline"})->Increment(3);
  errors->Labels({"bad \"quote\"\\path\nline"})->Increment();
  Gauge* running = Unwrap(registry.AddGauge("pdserve:num_requests_running", "Running."))->Get();
  running->Set(2);
  running->Add(-0.5);
  HistogramFamily* stages = Unwrap(
      registry.AddHistogram("pdserve:stage_seconds", "Stage time.", {0.05, 0.5, 1}, {"stage"}));
  Histogram* compute = stages->Labels({"prefill.compute"});
  compute->Observe(0.01);
  compute->Observe(0.05);
  compute->Observe(0.75);
  compute->Observe(3);
  // Registered, never given a child: not rendered.
  Unwrap(registry.AddCounter("pdserve:unused_total", "Unused.", {"x"}));
  Histogram* plain = Unwrap(registry.AddHistogram("plain_seconds", "No labels.", {1}))->Get();
  plain->Observe(0.5);

  EXPECT_EQ(registry.RenderText(),
            "# HELP pdserve:request_errors_total Failed requests.\\nBy kind \\\\ reason.\n"
            "# TYPE pdserve:request_errors_total counter\n"
            "pdserve:request_errors_total{kind=\"bad \\\"quote\\\"\\\\path\\nline\"} 1\n"
            "pdserve:request_errors_total{kind=\"deadline\"} 3\n"
            "# HELP pdserve:num_requests_running Running.\n"
            "# TYPE pdserve:num_requests_running gauge\n"
            "pdserve:num_requests_running 1.5\n"
            "# HELP pdserve:stage_seconds Stage time.\n"
            "# TYPE pdserve:stage_seconds histogram\n"
            "pdserve:stage_seconds_bucket{stage=\"prefill.compute\",le=\"0.05\"} 2\n"
            "pdserve:stage_seconds_bucket{stage=\"prefill.compute\",le=\"0.5\"} 2\n"
            "pdserve:stage_seconds_bucket{stage=\"prefill.compute\",le=\"1\"} 3\n"
            "pdserve:stage_seconds_bucket{stage=\"prefill.compute\",le=\"+Inf\"} 4\n"
            "pdserve:stage_seconds_sum{stage=\"prefill.compute\"} 3.81\n"
            "pdserve:stage_seconds_count{stage=\"prefill.compute\"} 4\n"
            "# HELP plain_seconds No labels.\n"
            "# TYPE plain_seconds histogram\n"
            "plain_seconds_bucket{le=\"1\"} 1\n"
            "plain_seconds_bucket{le=\"+Inf\"} 1\n"
            "plain_seconds_sum 0.5\n"
            "plain_seconds_count 1\n");
}

TEST(MetricsRegistryTest, StrictParserReadsBackLabelsAndHelp) {
  MetricsRegistry registry;
  CounterFamily* family =
      Unwrap(registry.AddCounter("c_total", "Help with \\ and\nnewline.", {"a", "b"}));
  family->Labels({"x\"y", "line1\nline2\\"})->Increment(7);
  std::string error;
  const auto families = testing::ParseExposition(registry.RenderText(), &error);
  ASSERT_EQ(error, "");
  ASSERT_EQ(families.size(), 1u);
  EXPECT_EQ(families[0].help, "Help with \\ and\nnewline.");
  ASSERT_EQ(families[0].samples.size(), 1u);
  EXPECT_THAT(families[0].samples[0].labels,
              ElementsAre(std::pair<std::string, std::string>("a", "x\"y"),
                          std::pair<std::string, std::string>("b", "line1\nline2\\")));
  EXPECT_EQ(families[0].samples[0].value, 7);
}

TEST(MetricsRegistryTest, StrictParserRejectsBrokenExpositions) {
  std::string error;
  for (const char* bad : {
           "x 1\n",                                           // No TYPE.
           "# TYPE x counter\nx -1\n",                        // Negative counter.
           "# TYPE x counter\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n",  // Duplicate series.
           "# TYPE x gauge\nx{a=\"\\q\"} 1\n",                // Bad escape.
           "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
           "h_sum 1\nh_count 1\n",                                            // Not cumulative.
           "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",  // No +Inf.
           "# TYPE x gauge\nx 1",                                             // No final newline.
       }) {
    error.clear();
    testing::ParseExposition(bad, &error);
    EXPECT_NE(error, "") << bad;
  }
}

TEST(HistogramTest, BucketsAreLessOrEqualAndCumulative) {
  Histogram histogram({0.1, 0.5, 1.0});
  for (double value : {0.05, 0.1, -3.0, 0.3, 1.0, 2.0, 1e9}) histogram.Observe(value);
  histogram.Observe(NAN);  // Ignored.
  const Histogram::Snapshot snapshot = histogram.snapshot();
  // Per bucket: {0.05, 0.1, -3} <= 0.1; {0.3} <= 0.5; {1.0} <= 1; {2, 1e9} +Inf.
  EXPECT_THAT(snapshot.cumulative_counts, ElementsAre(3, 4, 5, 7));
  EXPECT_EQ(snapshot.count, 7u);
  EXPECT_DOUBLE_EQ(snapshot.sum, 0.05 + 0.1 - 3.0 + 0.3 + 1.0 + 2.0 + 1e9);
}

TEST(HistogramTest, BucketHelpers) {
  EXPECT_THAT(LinearBuckets(1, 2, 3), ElementsAre(1, 3, 5));
  EXPECT_THAT(ExponentialBuckets(0.5, 2, 4), ElementsAre(0.5, 1, 2, 4));
}

TEST(MetricsRegistryTest, RejectsBadRegistrations) {
  MetricsRegistry registry;
  EXPECT_EQ(registry.AddCounter("bad-name", "h").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddCounter("ok_total", "h", {"bad:label"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddCounter("ok_total", "h", {"a", "a"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h_seconds", "h", {1, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h_seconds", "h", {2, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h_seconds", "h", {1, INFINITY}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h_seconds", "h", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h_seconds", "h", {1}, {"le"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MetricsRegistryTest, SameRegistrationIsSharedAndConflictsAreRefused) {
  MetricsRegistry registry;
  CounterFamily* first = Unwrap(registry.AddCounter("x_total", "X.", {"k"}));
  EXPECT_EQ(Unwrap(registry.AddCounter("x_total", "X.", {"k"})), first);
  EXPECT_EQ(registry.AddGauge("x_total", "X.", {"k"}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.AddCounter("x_total", "Other help.", {"k"}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.AddCounter("x_total", "X.", {"other"}).status().code(),
            absl::StatusCode::kAlreadyExists);

  HistogramFamily* histogram = Unwrap(registry.AddHistogram("lat_seconds", "L.", {1, 2}));
  EXPECT_EQ(Unwrap(registry.AddHistogram("lat_seconds", "L.", {1, 2})), histogram);
  EXPECT_EQ(registry.AddHistogram("lat_seconds", "L.", {1, 3}).status().code(),
            absl::StatusCode::kAlreadyExists);
  // Names a histogram exposes are taken, in either order of registration.
  EXPECT_EQ(registry.AddCounter("lat_seconds_count", "C.").status().code(),
            absl::StatusCode::kAlreadyExists);
  Unwrap(registry.AddGauge("q_sum", "Q."));
  EXPECT_EQ(registry.AddHistogram("q", "Q.", {1}).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(MetricsRegistryTest, FamiliesWithoutLabelsAreExposedAtZero) {
  MetricsRegistry registry;
  Unwrap(registry.AddCounter("tokens_total", "T."));
  EXPECT_EQ(registry.RenderText(),
            "# HELP tokens_total T.\n# TYPE tokens_total counter\ntokens_total 0\n");
}

TEST(GaugeTest, CallbackIsReadAtScrapeTimeAndCanBeRemoved) {
  MetricsRegistry registry;
  Gauge* usage = Unwrap(registry.AddGauge("kv_usage", "U."))->Get();
  usage->Set(0.25);
  double live = 0.5;
  usage->SetCallback([&live] { return live; });
  EXPECT_THAT(registry.RenderText(), HasSubstr("kv_usage 0.5\n"));
  live = 0.75;
  EXPECT_THAT(registry.RenderText(), HasSubstr("kv_usage 0.75\n"));
  usage->SetCallback(nullptr);
  EXPECT_THAT(registry.RenderText(), HasSubstr("kv_usage 0.25\n"));
}

TEST(MetricsConcurrencyTest, ManyThreadsUpdateWithoutLosingCounts) {
  MetricsRegistry registry;
  CounterFamily* counters = Unwrap(registry.AddCounter("n_total", "N.", {"worker"}));
  HistogramFamily* histograms =
      Unwrap(registry.AddHistogram("v_seconds", "V.", {0.25, 0.75}, {"worker"}));
  Gauge* gauge = Unwrap(registry.AddGauge("g", "G."))->Get();
  constexpr int kThreads = 8;
  constexpr int kIterations = 50000;
  std::atomic<bool> done{false};
  // Scrapes run alongside the updates (and under TSan, check the locking).
  std::thread scraper([&] {
    std::string error;
    while (!done.load()) {
      testing::ParseExposition(registry.RenderText(), &error);
      ASSERT_EQ(error, "");
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Every thread asks for the shared child too: creation must be once.
      Counter* shared = counters->Labels({"shared"});
      Counter* own = counters->Labels({std::to_string(t % 2)});
      Histogram* histogram = histograms->Labels({"shared"});
      for (int i = 0; i < kIterations; ++i) {
        shared->Increment();
        own->Increment(2);
        histogram->Observe(i % 2 == 0 ? 0.5 : 1.0);
        gauge->Add(1);
        gauge->Add(-1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done = true;
  scraper.join();

  EXPECT_EQ(counters->Labels({"shared"})->value(), kThreads * kIterations);
  EXPECT_EQ(counters->Labels({"0"})->value(), 2.0 * (kThreads / 2) * kIterations);
  EXPECT_EQ(counters->Labels({"1"})->value(), 2.0 * (kThreads / 2) * kIterations);
  const Histogram::Snapshot snapshot = histograms->Labels({"shared"})->snapshot();
  EXPECT_THAT(snapshot.cumulative_counts,
              ElementsAre(0, kThreads * kIterations / 2, kThreads * kIterations));
  EXPECT_DOUBLE_EQ(snapshot.sum, kThreads * kIterations / 2 * 1.5);
  EXPECT_EQ(gauge->value(), 0);
}

TEST(PdserveMetricsTest, RegistersTheStandardSetOnceWithAllLabelValues) {
  MetricsRegistry registry;
  const PdserveMetrics metrics = Unwrap(PdserveMetrics::Register(registry));
  // A second component of the same process gets the same metrics.
  const PdserveMetrics again = Unwrap(PdserveMetrics::Register(registry));
  EXPECT_EQ(again.time_to_first_token_seconds, metrics.time_to_first_token_seconds);
  EXPECT_EQ(&again.stage(Stage::kKvTransfer), &metrics.stage(Stage::kKvTransfer));

  metrics.success(FinishReason::kLength).Increment();
  metrics.error(ErrorKind::kDeadline).Increment(2);
  metrics.kv_cache_usage_perc->SetCallback([] { return 0.5; });
  StageTimeline timeline;
  timeline.Record(Stage::kPrefillCompute, {1000, 30'000'000});  // 30 ms.
  timeline.Record(Stage::kDecodeGenerate, {50'000'000, 2'000'000'000});
  metrics.ObserveStages(timeline);

  const std::string text = registry.RenderText();
  std::string error;
  const auto families = testing::ParseExposition(text, &error);
  ASSERT_EQ(error, "") << text;
  std::set<std::string> names;
  for (const auto& family : families) names.insert(family.name);
  for (const char* name :
       {kTimeToFirstTokenSeconds, kInterTokenLatencySeconds, kRequestTimePerOutputTokenSeconds,
        kE2eRequestLatencySeconds, kRequestQueueTimeSeconds, kStageSeconds, kNumRequestsRunning,
        kNumRequestsWaiting, kKvCacheUsagePerc, kQueuedPrefillTokens, kKvTransferBytesTotal,
        kKvTransferSecondsTotal, kPrefixCacheQueriesTotal, kPrefixCacheHitsTotal,
        kPromptTokensTotal, kGenerationTokensTotal, kRequestSuccessTotal, kRequestErrorsTotal}) {
    EXPECT_TRUE(names.count(name)) << name;
  }
  EXPECT_THAT(text, HasSubstr("pdserve:request_success_total{finish_reason=\"length\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pdserve:request_success_total{finish_reason=\"abort\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("pdserve:request_errors_total{kind=\"deadline\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("pdserve:kv_cache_usage_perc 0.5\n"));
  EXPECT_THAT(
      text, HasSubstr("pdserve:stage_seconds_bucket{stage=\"prefill.compute\",le=\"0.025\"} 0\n"));
  EXPECT_THAT(text,
              HasSubstr("pdserve:stage_seconds_bucket{stage=\"prefill.compute\",le=\"0.05\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pdserve:stage_seconds_count{stage=\"decode.generate\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pdserve:stage_seconds_count{stage=\"router.queue\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("pdserve:time_to_first_token_seconds_bucket{le=\"2560\"} 0\n"));
}

}  // namespace
}  // namespace pdserve::tracing
