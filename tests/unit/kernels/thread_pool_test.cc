#include "kernels/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace pdserve::kernels {
namespace {

TEST(ThreadPoolTest, RunsOnEveryThreadOnce) {
  for (int n : {1, 2, 3, 4}) {
    ThreadPool pool(n);
    EXPECT_EQ(pool.size(), n);
    std::vector<std::atomic<int>> hits(n);
    for (int iter = 0; iter < 100; ++iter) {
      pool.Run([&](int ith, int nth) {
        ASSERT_EQ(nth, n);
        hits[ith].fetch_add(1);
      });
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 100);
  }
}

TEST(ThreadPoolTest, BarrierOrdersPhases) {
  ThreadPool pool(3);
  std::vector<int> data(3 * 64);
  pool.Run([&](int ith, int nth) {
    for (int phase = 0; phase < 200; ++phase) {
      data[ith * 64] = phase;
      pool.Barrier();
      for (int j = 0; j < nth; ++j) ASSERT_EQ(data[j * 64], phase);
      pool.Barrier();
    }
  });
}

TEST(ThreadPoolTest, WakesSleepingWorkers) {
  ThreadPool pool(2);
  std::atomic<int> sum{0};
  for (int iter = 0; iter < 5; ++iter) {
    // Long enough for the workers to stop spinning and sleep.
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    pool.Run([&](int ith, int) { sum.fetch_add(ith + 1); });
  }
  EXPECT_EQ(sum.load(), 5 * 3);
}

TEST(ThreadPoolTest, BarrierWakesSleepers) {
  ThreadPool pool(2);
  std::atomic<int> after{0};
  pool.Run([&](int ith, int) {
    if (ith == 0) std::this_thread::sleep_for(std::chrono::milliseconds(3));
    pool.Barrier();
    after.fetch_add(1);
  });
  EXPECT_EQ(after.load(), 2);
}

TEST(ThreadPoolTest, CallerWaitsForSlowWorker) {
  ThreadPool pool(2);
  std::atomic<bool> done{false};
  pool.Run([&](int ith, int) {
    if (ith == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
      done.store(true);
    }
  });
  EXPECT_TRUE(done.load());
}

TEST(ThreadPoolTest, PinnedPoolRuns) {
  ThreadPool pool(2, {0});  // both threads on CPU 0: still correct, just slower
  std::atomic<int> sum{0};
  for (int iter = 0; iter < 20; ++iter) {
    pool.Run([&](int ith, int) {
      sum.fetch_add(ith + 1);
      pool.Barrier();
    });
  }
  EXPECT_EQ(sum.load(), 20 * 3);
}

TEST(ThreadPoolTest, SplitRangeCoversRangeAligned) {
  for (int64_t n : {0, 1, 15, 16, 17, 100, 576, 49152}) {
    for (int nth : {1, 2, 3, 7}) {
      int64_t expect = 0;
      for (int ith = 0; ith < nth; ++ith) {
        int64_t b, e;
        SplitRange(n, ith, nth, 16, &b, &e);
        EXPECT_EQ(b, expect);
        if (b < n) {
          EXPECT_EQ(b % 16, 0);
        }
        expect = e;
      }
      EXPECT_EQ(expect, n);
    }
  }
}

}  // namespace
}  // namespace pdserve::kernels
