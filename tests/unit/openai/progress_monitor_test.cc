#include "node/progress_monitor.h"

#include <gtest/gtest.h>

namespace pdserve::node {
namespace {

constexpr int64_t kSec = 1000000000;

TEST(ProgressMonitorTest, IdleNodeIsNeverStalled) {
  ProgressMonitor m(5 * kSec);
  m.Observe(7, /*has_work=*/false, 0);
  m.Observe(7, false, 100 * kSec);
  EXPECT_FALSE(m.stalled());
}

TEST(ProgressMonitorTest, QueuedWorkWithoutStepsStallsAfterTheTimeout) {
  ProgressMonitor m(5 * kSec);
  m.Observe(7, true, 0);
  m.Observe(7, true, 4 * kSec);
  EXPECT_FALSE(m.stalled());
  m.Observe(7, true, 6 * kSec);
  EXPECT_TRUE(m.stalled());
  EXPECT_EQ(m.stalled_for_ns(6 * kSec), 6 * kSec);
  // One step is progress again.
  m.Observe(8, true, 7 * kSec);
  EXPECT_FALSE(m.stalled());
  EXPECT_EQ(m.stalled_for_ns(7 * kSec), 0);
}

TEST(ProgressMonitorTest, WorkArrivingAfterIdleCountsFromItsArrival) {
  ProgressMonitor m(5 * kSec);
  m.Observe(3, false, 0);
  m.Observe(3, true, 100 * kSec);  // busy for the first time
  EXPECT_FALSE(m.stalled());
  m.Observe(3, true, 106 * kSec);
  EXPECT_TRUE(m.stalled());
}

// Liveness fails only past its own limit (longer than readiness's), and
// never when it is off.
TEST(ProgressMonitorTest, DeadOnlyPastTheLivenessLimit) {
  ProgressMonitor m(5 * kSec);
  m.Observe(7, true, 0);
  m.Observe(7, true, 6 * kSec);
  ASSERT_TRUE(m.stalled());
  EXPECT_FALSE(ProgressMonitor::Dead(m.stalled_for_ns(6 * kSec), 30 * kSec));
  m.Observe(7, true, 31 * kSec);
  EXPECT_TRUE(ProgressMonitor::Dead(m.stalled_for_ns(31 * kSec), 30 * kSec));
  EXPECT_FALSE(ProgressMonitor::Dead(m.stalled_for_ns(31 * kSec), 0));
  m.Observe(8, true, 32 * kSec);  // a step: alive again
  EXPECT_FALSE(ProgressMonitor::Dead(m.stalled_for_ns(32 * kSec), 30 * kSec));
}

}  // namespace
}  // namespace pdserve::node
