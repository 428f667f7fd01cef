// Open-loop arrival processes: the gaps between request sends.
#pragma once

#include <cstdint>
#include <random>

namespace pdserve::loadgen {

// Gamma-distributed gaps with shape `burstiness` and mean 1/rate (vLLM's
// benchmark definition): burstiness 1 is a Poisson process, below 1 burstier,
// above 1 more regular; the coefficient of variation is 1/sqrt(burstiness).
// An infinite rate gives zero gaps (everything at once).
// The arrival process's seed for a run seeded `run_seed`: mixed so that the
// arrival draws do not mirror the workload's (the planner uses it too, so a
// simulated run sees the same gaps as the measured one).
inline uint64_t ArrivalSeed(uint64_t run_seed) { return run_seed ^ 0x9e3779b97f4a7c15ull; }

class ArrivalProcess {
 public:
  ArrivalProcess(double rate, double burstiness, uint64_t seed);
  // Seconds until the next request.
  double NextIntervalS();
  bool unbounded() const { return unbounded_; }

 private:
  bool unbounded_;
  std::mt19937_64 rng_;
  std::gamma_distribution<double> gamma_;
};

}  // namespace pdserve::loadgen
