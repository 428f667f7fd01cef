#include "loadgen/stats.h"

#include <cmath>

#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

TEST(PercentileTest, InterpolatesLinearlyBetweenRanksLikeNumpy) {
  const std::vector<double> v = {50, 15, 40, 20, 35};  // unsorted on purpose
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 15);
  EXPECT_DOUBLE_EQ(Percentile(v, 40), 29);  // np.percentile(v, 40) == 29.0
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 35);
  EXPECT_DOUBLE_EQ(Percentile(v, 90), 46);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 50);
  const std::vector<double> one_to_five = {1, 2, 3, 4, 5};
  EXPECT_DOUBLE_EQ(Percentile(one_to_five, 99), 4.96);
}

TEST(PercentileTest, SingleValueAndEmpty) {
  EXPECT_DOUBLE_EQ(Percentile({7.5}, 99), 7.5);
  EXPECT_TRUE(std::isnan(Percentile({}, 50)));
}

TEST(DescribeTest, MeanPopulationStddevAndRequestedPercentiles) {
  const Distribution d = Describe({2, 4, 4, 4, 5, 5, 7, 9}, {50, 90, 99});
  EXPECT_EQ(d.count, 8u);
  EXPECT_DOUBLE_EQ(d.mean, 5);
  EXPECT_DOUBLE_EQ(d.stddev, 2);
  ASSERT_EQ(d.percentiles.size(), 3u);
  EXPECT_DOUBLE_EQ(d.At(50), 4.5);
  EXPECT_DOUBLE_EQ(d.At(90), 7.6);
  EXPECT_TRUE(std::isnan(d.At(75)));  // not asked for
  EXPECT_LE(d.At(50), d.At(90));
  EXPECT_LE(d.At(90), d.At(99));
}

TEST(DescribeTest, EmptyIsAllNaN) {
  const Distribution d = Describe({}, {50});
  EXPECT_EQ(d.count, 0u);
  EXPECT_TRUE(std::isnan(d.mean));
  EXPECT_TRUE(std::isnan(d.At(50)));
}

TEST(ParsePercentilesTest, AcceptsListsAndRejectsOutOfRange) {
  auto p = ParsePercentiles("50, 90,99.9");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, (std::vector<double>{50, 90, 99.9}));
  EXPECT_EQ(PercentileName(99.9), "p99.9");
  EXPECT_EQ(PercentileName(50), "p50");
  EXPECT_FALSE(ParsePercentiles("0").ok());
  EXPECT_FALSE(ParsePercentiles("101").ok());
  EXPECT_FALSE(ParsePercentiles("fifty").ok());
  EXPECT_FALSE(ParsePercentiles("").ok());
}

TEST(SloTest, ParsesSeparateAndCommaSeparatedItems) {
  auto slo = ParseSlo({"ttft:200", "tpot:50,e2e:3000"});
  ASSERT_TRUE(slo.ok()) << slo.status();
  EXPECT_EQ(*slo->ttft_ms, 200);
  EXPECT_EQ(*slo->tpot_ms, 50);
  EXPECT_EQ(*slo->e2e_ms, 3000);
  auto only = ParseSlo({"ttft:1.5"});
  ASSERT_TRUE(only.ok());
  EXPECT_FALSE(only->tpot_ms.has_value());
  EXPECT_TRUE(ParseSlo({}).value().empty());
}

TEST(SloTest, RejectsMalformedItems) {
  for (const char* bad :
       {"ttft", "ttft:", "ttft:-5", "ttft:0", "latency:5", "ttft:abc", "tpot:inf"}) {
    EXPECT_FALSE(ParseSlo({bad}).ok()) << bad;
  }
}

TEST(SloTest, RequestMeetsOnlyWhenEveryGivenSloHolds) {
  Slo slo;
  slo.ttft_ms = 100;
  slo.tpot_ms = 20;
  EXPECT_TRUE(MeetsSlo(slo, 100, 20, 1e9));  // bounds are inclusive; e2e not checked
  EXPECT_FALSE(MeetsSlo(slo, 100.1, 20, 0));
  EXPECT_FALSE(MeetsSlo(slo, 50, 21, 0));
  EXPECT_TRUE(MeetsSlo(slo, 50, std::nan(""), 0));  // one output token: no TPOT
  EXPECT_FALSE(MeetsSlo(slo, std::nan(""), 1, 0));  // no first token: no TTFT
  EXPECT_TRUE(MeetsSlo(Slo{}, 1e9, 1e9, 1e9));
}

}  // namespace
}  // namespace pdserve::loadgen
