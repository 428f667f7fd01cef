// Drives one run: sends the prompts on an arrival schedule (open loop) or
// keeping N in flight (closed loop), enforces the time bound, and collects
// one record per prompt.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadgen/client.h"
#include "loadgen/summary.h"

namespace pdserve::loadgen {

struct RunOptions {
  RunConfig config;
  // The whole run (warm-ups excluded) ends by this bound: prompts not yet
  // sent are dropped and requests in flight are cancelled.
  double max_duration_s = 600.0;
  uint64_t seed = 0;  // the arrival process's
  // Sent first and awaited, not recorded. Never prompts of the run: a warm-up
  // that replays a measured prompt would hand it a prefix-cache hit.
  std::vector<RequestInput> warmup_prompts;
  std::string id_prefix;  // prepended to request ids (unique across runs)
  bool progress = false;  // live status line on stderr
  std::string label;      // shown in the progress line
  // When set (a signal handler's flag), the run ends as at its time bound.
  const std::atomic<bool>* interrupted = nullptr;
};

struct RunResult {
  std::vector<RequestRecord> records;  // one per prompt, in prompt order
  double duration_s = 0.0;             // first send to last end (cut short by the bound)
};

// Fails only when the transport did not give every request back after the
// cancellation (a bug in a client).
absl::StatusOr<RunResult> RunLoad(LoadClient* client, const std::vector<RequestInput>& prompts,
                                  const RunOptions& options);

}  // namespace pdserve::loadgen
