// A persistent pool of worker threads with a cheap spinning barrier.
// The engine runs a whole forward pass inside one Run(): every thread walks
// the same op sequence, does its slice of each op and meets the others at
// Barrier() between ops, so a decode step pays no fork/join per kernel.
// Waiting threads (workers between Runs, Barrier, the caller of Run) spin
// briefly, then spin with sched_yield (on an oversubscribed machine the core
// goes to whoever needs it), then sleep on a futex after 0.5 ms, so an idle
// process burns no core.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

namespace pdserve::kernels {

class ThreadPool {
 public:
  // `n_threads` counts the calling thread; 1 means no workers.
  // `pin_cpus`, when not empty, pins thread i to pin_cpus[i % size].
  explicit ThreadPool(int n_threads, std::vector<int> pin_cpus = {});
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(ith, nth) on every thread, the caller as ith = 0, and returns
  // when all have finished. Not reentrant.
  template <typename Fn>
  void Run(Fn&& fn) {
    RunImpl(&InvokeThunk<std::remove_reference_t<Fn>>, &fn);
  }

  // Called by all nth threads inside Run(): returns once all arrived.
  void Barrier();

 private:
  using Thunk = void (*)(void* ctx, int ith, int nth);
  template <typename Fn>
  static void InvokeThunk(void* ctx, int ith, int nth) {
    (*static_cast<Fn*>(ctx))(ith, nth);
  }
  void RunImpl(Thunk thunk, void* ctx);
  void WorkerLoop(int ith);

  const int n_threads_;
  const std::vector<int> pin_cpus_;
  bool pinned_caller_ = false;
  std::vector<std::thread> workers_;
  // Work hand-off: generation_ bumps when a new job is published. 32-bit
  // words so that sleepers can futex-wait on them directly.
  alignas(64) std::atomic<uint32_t> generation_{0};
  std::atomic<int> sleepers_{0};             // workers blocked (or about to block) on generation_
  alignas(64) std::atomic<int> pending_{0};  // workers still running the current job
  std::atomic<int> pending_sleepers_{0};
  alignas(64) std::atomic<int> barrier_count_{0};
  alignas(64) std::atomic<uint32_t> barrier_phase_{0};
  std::atomic<int> barrier_sleepers_{0};
  Thunk thunk_ = nullptr;
  void* ctx_ = nullptr;
  std::atomic<bool> stop_{false};
};

// Splits [0, n) into nth nearly equal parts aligned to `align`; returns
// thread ith's [begin, end).
inline void SplitRange(int64_t n, int ith, int nth, int64_t align, int64_t* begin, int64_t* end) {
  const int64_t chunks = (n + align - 1) / align;
  const int64_t per = chunks / nth, extra = chunks % nth;
  const int64_t c0 = ith * per + (ith < extra ? ith : extra);
  const int64_t c1 = c0 + per + (ith < extra ? 1 : 0);
  *begin = c0 * align < n ? c0 * align : n;
  *end = c1 * align < n ? c1 * align : n;
}

}  // namespace pdserve::kernels
