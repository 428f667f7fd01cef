#include "loadgen/arrivals.h"

#include <cmath>

namespace pdserve::loadgen {

ArrivalProcess::ArrivalProcess(double rate, double burstiness, uint64_t seed)
    : unbounded_(!std::isfinite(rate)),
      rng_(seed),
      // theta = 1 / (rate * shape) keeps the mean gap at 1/rate.
      gamma_(burstiness, unbounded_ ? 1.0 : 1.0 / (rate * burstiness)) {}

double ArrivalProcess::NextIntervalS() {
  if (unbounded_) return 0.0;
  return gamma_(rng_);
}

}  // namespace pdserve::loadgen
