// Readiness that tracks forward progress, not just a live process: a node
// with queued work whose engine has not finished a step for `stall_after`
// is stuck (a wedged kernel, a deadlock) and must stop taking traffic.
#pragma once

#include <cstdint>

namespace pdserve::node {

class ProgressMonitor {
 public:
  explicit ProgressMonitor(int64_t stall_after_ns = int64_t{60} * 1000000000)
      : stall_after_ns_(stall_after_ns) {}

  // Feeds one sample: the engine's step counter and whether work is queued
  // or running, at monotonic time `now_ns`. Not thread-safe: one sampler.
  void Observe(int64_t steps, bool has_work, int64_t now_ns) {
    // Work that just arrived has waited no time yet, whatever the idle gap.
    if (steps != last_steps_ || !has_work || !had_work_ || last_progress_ns_ < 0) {
      last_progress_ns_ = now_ns;
    }
    last_steps_ = steps;
    had_work_ = has_work;
    stalled_ = has_work && now_ns - last_progress_ns_ > stall_after_ns_;
  }

  bool stalled() const { return stalled_; }
  // Liveness: a node stalled past `dead_after_ns` (> 0) will not recover by
  // itself and should be restarted; 0 disables it.
  static bool Dead(int64_t stalled_for_ns, int64_t dead_after_ns) {
    return dead_after_ns > 0 && stalled_for_ns >= dead_after_ns;
  }
  // How long the queued work has waited for a step (0 when progressing).
  int64_t stalled_for_ns(int64_t now_ns) const { return stalled_ ? now_ns - last_progress_ns_ : 0; }

 private:
  int64_t stall_after_ns_;
  int64_t last_steps_ = -1;
  bool had_work_ = false;
  int64_t last_progress_ns_ = -1;
  bool stalled_ = false;
};

}  // namespace pdserve::node
