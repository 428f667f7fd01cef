// Simulated requests from loadgen's own generators: the same prompt and
// output lengths (loadgen/workload.h) and the same arrival gaps
// (loadgen/arrivals.h, seeded as loadgen's runner seeds them) as a
// `pdserve loadgen` run with the same flags.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "loadgen/workload.h"
#include "planner/simulator.h"

namespace pdserve::planner {

// `rate` in requests/s (infinity: all at time 0); `burstiness` is the gamma
// shape (1: Poisson).
absl::StatusOr<std::vector<SimRequest>> BuildSimRequests(const loadgen::WorkloadOptions& workload,
                                                         double rate, double burstiness);

}  // namespace pdserve::planner
