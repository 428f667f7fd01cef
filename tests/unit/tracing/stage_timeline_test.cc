#include "tracing/stage_timeline.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace pdserve::tracing {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(StageTest, NamesRoundTripInPipelineOrder) {
  std::vector<std::string_view> names;
  for (Stage stage : AllStages()) {
    names.push_back(StageName(stage));
    EXPECT_EQ(StageFromName(StageName(stage)), stage);
  }
  EXPECT_THAT(names, ElementsAre("router.queue", "router.tokenize", "prefill.queue",
                                 "prefill.compute", "kv.transfer", "decode.wait_kv", "decode.queue",
                                 "decode.first_step", "decode.generate"));
  EXPECT_EQ(StageFromName("prefill"), std::nullopt);
}

// A clock the test moves by hand.
int64_t fake_now_ns = 0;
int64_t FakeNow() { return fake_now_ns; }

TEST(StageTimerTest, RecordsOffsetFromOriginAndDuration) {
  StageTimeline timeline;
  fake_now_ns = 1'000'000;
  const int64_t origin = fake_now_ns;
  fake_now_ns += 250;
  {
    StageTimer timer(&timeline, origin, Stage::kPrefillQueue, &FakeNow);
    fake_now_ns += 4000;
  }  // Destruction records.
  StageTimer compute(&timeline, origin, Stage::kPrefillCompute, &FakeNow);
  fake_now_ns += 90'000;
  EXPECT_EQ(compute.Stop(), 90'000);
  fake_now_ns += 5;
  EXPECT_EQ(compute.Stop(), 90'000);  // Stopping again changes nothing.

  EXPECT_EQ(timeline.Get(Stage::kPrefillQueue), (StageInterval{250, 4000}));
  EXPECT_EQ(timeline.Get(Stage::kPrefillCompute), (StageInterval{4250, 90'000}));
  EXPECT_EQ(timeline.Get(Stage::kKvTransfer), std::nullopt);
  EXPECT_EQ(timeline.end_offset_ns(), 94'250);
}

TEST(StageTimerTest, RealClockGivesNonNegativeDurations) {
  StageTimeline timeline;
  const int64_t origin = MonoNowNs();
  { StageTimer timer(&timeline, origin, Stage::kRouterTokenize); }
  ASSERT_TRUE(timeline.Get(Stage::kRouterTokenize).has_value());
  EXPECT_GE(timeline.Get(Stage::kRouterTokenize)->start_offset_ns, 0);
  EXPECT_GE(timeline.Get(Stage::kRouterTokenize)->duration_ns, 0);
}

TEST(StageTimelineTest, MergeRemotePlacesNodeStagesOnRouterTimeline) {
  StageTimeline router;
  router.Record(Stage::kRouterQueue, {0, 100});
  router.Record(Stage::kRouterTokenize, {100, 400});
  // The prefill node counts from when it got the request; the router sent
  // it at 600 ns on its own clock.
  StageTimeline prefill;
  prefill.Record(Stage::kPrefillQueue, {10, 50});
  prefill.Record(Stage::kPrefillCompute, {60, 1000});
  router.MergeRemote(prefill, 600);

  EXPECT_THAT(router.Entries(),
              ElementsAre(Pair(Stage::kRouterQueue, StageInterval{0, 100}),
                          Pair(Stage::kRouterTokenize, StageInterval{100, 400}),
                          Pair(Stage::kPrefillQueue, StageInterval{610, 50}),
                          Pair(Stage::kPrefillCompute, StageInterval{660, 1000})));
  EXPECT_EQ(router.end_offset_ns(), 1660);
}

TEST(StageTimelineTest, JsonRoundTripsAndSkipsJunk) {
  StageTimeline timeline;
  timeline.Record(Stage::kDecodeGenerate, {5000, 70000});
  timeline.Record(Stage::kKvTransfer, {1000, 3000});
  const nlohmann::ordered_json json = TimelineToJson(timeline);
  // Pipeline order, not insertion or alphabetical order.
  EXPECT_EQ(json.dump(), R"({"kv.transfer":{"start_ns":1000,"duration_ns":3000},)"
                         R"("decode.generate":{"start_ns":5000,"duration_ns":70000}})");
  EXPECT_EQ(TimelineFromJson(json), timeline);

  const auto junk = nlohmann::ordered_json::parse(
      R"({"bogus.stage":{"start_ns":1,"duration_ns":2},"kv.transfer":{"start_ns":"x"},)"
      R"("decode.queue":{"start_ns":7,"duration_ns":8}})");
  StageTimeline expected;
  expected.Record(Stage::kDecodeQueue, {7, 8});
  EXPECT_EQ(TimelineFromJson(junk), expected);
}

TEST(StageTimelineTest, RequestLogLineIsOneJsonObject) {
  StageTimeline timeline;
  timeline.Record(Stage::kRouterQueue, {0, 10});
  timeline.Record(Stage::kDecodeGenerate, {100, 900});
  const std::string line =
      RequestTimingLogLine("req-\"1\"\n", "4bf92f3577b34da6a3ce929d0e0e4736", timeline);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["request_id"], "req-\"1\"\n");
  EXPECT_EQ(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(json["total_ns"], 1000);
  EXPECT_EQ(json["stages"]["decode.generate"]["duration_ns"], 900);
  EXPECT_EQ(json["stages"]["router.queue"]["start_ns"], 0);
}

}  // namespace
}  // namespace pdserve::tracing
