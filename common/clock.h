// Monotonic time for stage timings. Never compare these across machines.
#pragma once

#include <chrono>
#include <cstdint>

namespace pdserve {

using MonoClock = std::chrono::steady_clock;

inline int64_t MonoNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(MonoClock::now().time_since_epoch())
      .count();
}

}  // namespace pdserve
