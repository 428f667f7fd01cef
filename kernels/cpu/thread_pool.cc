#include "kernels/cpu/thread_pool.h"

#include <chrono>
#include <climits>

#if defined(__linux__)
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace pdserve::kernels {
namespace {

// How long a waiting thread spins before it sleeps: long enough to cover the
// gap between ops of a forward pass and between decode steps, short enough
// that an idle server does not burn its cores.
constexpr int64_t kSpinNs = 500'000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

template <typename T>
void FutexWait(std::atomic<T>* word, T old) {
  static_assert(sizeof(T) == 4);
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<T*>(word), FUTEX_WAIT_PRIVATE, old, nullptr, nullptr, 0);
#else
  word->wait(old);
#endif
}

template <typename T>
void FutexWakeAll(std::atomic<T>* word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<T*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
  word->notify_all();
#endif
}

// Returns once *word != old: spins briefly, then spins with sched_yield (so
// on an oversubscribed machine the core goes to whoever needs it, possibly
// the thread we wait for), then sleeps on the futex after kSpinNs. `sleepers`
// counts sleeping threads so the waker skips the syscall when nobody sleeps
// (both sides use seq_cst, so one of them sees the other).
template <typename T>
void WaitWhileEqual(std::atomic<T>* word, T old, std::atomic<int>* sleepers) {
  for (int i = 0; i < 32; ++i) {
    if (word->load(std::memory_order_acquire) != old) return;
    CpuRelax();
  }
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 16; ++i) {
      if (word->load(std::memory_order_acquire) != old) return;
      CpuRelax();
    }
    if (std::chrono::steady_clock::now() - start > std::chrono::nanoseconds(kSpinNs)) break;
#if defined(__linux__)
    sched_yield();
#endif
  }
  sleepers->fetch_add(1, std::memory_order_seq_cst);
  while (word->load(std::memory_order_seq_cst) == old) FutexWait(word, old);
  sleepers->fetch_sub(1, std::memory_order_relaxed);
}

void PinCurrentThread(int cpu) {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
#endif
}

}  // namespace

ThreadPool::ThreadPool(int n_threads, std::vector<int> pin_cpus)
    : n_threads_(n_threads < 1 ? 1 : n_threads), pin_cpus_(std::move(pin_cpus)) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) {
    workers_.emplace_back([this, i] {
      if (!pin_cpus_.empty()) PinCurrentThread(pin_cpus_[i % pin_cpus_.size()]);
      WorkerLoop(i);
    });
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  FutexWakeAll(&generation_);
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int ith) {
  uint32_t seen = 0;
  for (;;) {
    WaitWhileEqual(&generation_, seen, &sleepers_);
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_relaxed)) return;
    thunk_(ctx_, ith, n_threads_);
    // The last worker out wakes the caller if it went to sleep.
    if (pending_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        pending_sleepers_.load(std::memory_order_seq_cst) > 0) {
      FutexWakeAll(&pending_);
    }
  }
}

void ThreadPool::RunImpl(Thunk thunk, void* ctx) {
  if (!pinned_caller_ && !pin_cpus_.empty()) {
    // The thread that calls Run() is thread 0; pin it on its first call.
    PinCurrentThread(pin_cpus_[0]);
    pinned_caller_ = true;
  }
  if (n_threads_ == 1) {
    thunk(ctx, 0, 1);
    return;
  }
  thunk_ = thunk;
  ctx_ = ctx;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) FutexWakeAll(&generation_);
  thunk(ctx, 0, n_threads_);
  for (int p = pending_.load(std::memory_order_acquire); p != 0;
       p = pending_.load(std::memory_order_acquire)) {
    WaitWhileEqual(&pending_, p, &pending_sleepers_);
  }
}

void ThreadPool::Barrier() {
  if (n_threads_ == 1) return;
  // The phase cannot advance before this thread arrives, so reading it first is safe.
  const uint32_t phase = barrier_phase_.load(std::memory_order_acquire);
  if (barrier_count_.fetch_add(1, std::memory_order_acq_rel) == n_threads_ - 1) {
    barrier_count_.store(0, std::memory_order_relaxed);
    barrier_phase_.fetch_add(1, std::memory_order_seq_cst);
    if (barrier_sleepers_.load(std::memory_order_seq_cst) > 0) FutexWakeAll(&barrier_phase_);
    return;
  }
  WaitWhileEqual(&barrier_phase_, phase, &barrier_sleepers_);
}

}  // namespace pdserve::kernels
