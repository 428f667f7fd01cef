#include "loadgen/arrivals.h"

#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

struct Moments {
  double mean;
  double cv;  // stddev / mean
};

Moments Sample(double rate, double burstiness, uint64_t seed, int n) {
  ArrivalProcess p(rate, burstiness, seed);
  double sum = 0, sq = 0;
  for (int i = 0; i < n; ++i) {
    const double x = p.NextIntervalS();
    EXPECT_GE(x, 0.0);
    sum += x;
    sq += x * x;
  }
  const double mean = sum / n;
  const double var = sq / n - mean * mean;
  return {mean, std::sqrt(var) / mean};
}

// With 200k draws the sampling error of the mean is ~0.2% (CV 1) and of the
// CV a few tenths of a percent; the bounds below are several times that.
constexpr int kDraws = 200000;

TEST(ArrivalProcessTest, PoissonGapsHaveMeanOneOverRateAndCvOne) {
  const Moments m = Sample(/*rate=*/8.0, /*burstiness=*/1.0, /*seed=*/42, kDraws);
  EXPECT_NEAR(m.mean, 1.0 / 8.0, 0.01 * (1.0 / 8.0));
  EXPECT_NEAR(m.cv, 1.0, 0.02);
}

TEST(ArrivalProcessTest, GammaCvIsOneOverSqrtShape) {
  for (double shape : {0.25, 0.5, 2.0, 4.0}) {
    const Moments m = Sample(/*rate=*/3.0, shape, /*seed=*/7, kDraws);
    EXPECT_NEAR(m.mean, 1.0 / 3.0, 0.02 * (1.0 / 3.0)) << "shape " << shape;
    EXPECT_NEAR(m.cv, 1.0 / std::sqrt(shape), 0.03 / std::sqrt(shape)) << "shape " << shape;
  }
}

TEST(ArrivalProcessTest, InfiniteRateSendsEverythingAtOnce) {
  ArrivalProcess p(std::numeric_limits<double>::infinity(), 1.0, 1);
  EXPECT_TRUE(p.unbounded());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(p.NextIntervalS(), 0.0);
}

TEST(ArrivalProcessTest, SeedMakesTheScheduleReproducible) {
  ArrivalProcess a(5.0, 1.0, 123), b(5.0, 1.0, 123), c(5.0, 1.0, 124);
  std::vector<double> va, vb, vc;
  for (int i = 0; i < 20; ++i) {
    va.push_back(a.NextIntervalS());
    vb.push_back(b.NextIntervalS());
    vc.push_back(c.NextIntervalS());
  }
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
}

}  // namespace
}  // namespace pdserve::loadgen
