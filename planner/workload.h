// Simulated requests from loadgen's own generators: the same prompt and
// output lengths (loadgen/workload.h) and the same arrival gaps
// (loadgen/arrivals.h, seeded as loadgen's runner seeds them) as a
// `pdserve loadgen` run with the same flags.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loadgen/workload.h"
#include "planner/simulator.h"

namespace pdserve::planner {

// `rate` in requests/s (infinity: all at time 0); `burstiness` is the gamma
// shape (1: Poisson).
absl::StatusOr<std::vector<SimRequest>> BuildSimRequests(const loadgen::WorkloadOptions& workload,
                                                         double rate, double burstiness);

// One run of a `pdserve loadgen --detailed-csv` file, as it was sent: its
// offered rate, and each sent request's start offset, prompt length and
// output length (what the client received; with --ignore-eos that is the
// requested length for every successful request). Requests loadgen never
// sent are left out. Replaying a measured run removes the workload from the
// comparison: the simulator sees the very arrivals and lengths the cluster
// saw.
struct ReplayRun {
  double rate = 0;
  std::vector<SimRequest> requests;  // by start offset
};

// Runs by rate, ascending. InvalidArgument naming the line for a missing
// column, a malformed number, a non-finite rate, a request with no prompt,
// lengths past 1e6 tokens or runs past 1e6 requests (plan's own bounds).
absl::StatusOr<std::vector<ReplayRun>> ParseLoadgenCsv(absl::string_view text);
absl::StatusOr<std::vector<ReplayRun>> LoadLoadgenCsv(const std::string& path);

}  // namespace pdserve::planner
