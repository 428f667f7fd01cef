// Per-request records and the figures of one run (one request rate).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "loadgen/client.h"
#include "loadgen/stats.h"

namespace pdserve::loadgen {

// One prompt of a run, times in milliseconds relative to its own send, the
// start offset relative to the run's start.
struct RequestRecord {
  int index = 0;
  std::string id;
  bool sent = false;
  bool success = false;
  bool cancelled = false;
  std::string error;
  double start_offset_s = 0.0;
  double ttft_ms = 0.0;
  double tpot_ms = 0.0;  // (e2e - ttft) / (output tokens - 1); NaN for one token
  double e2e_ms = 0.0;
  std::vector<double> itl_ms;  // every gap between output chunks
  // Send time minus the arrival schedule's time for this prompt: how late the
  // load generator itself sent it (NaN when not sent). In closed-loop runs
  // it includes the wait for a free slot.
  double dispatch_delay_ms = 0.0;
  int32_t planned_input_tokens = 0;
  int32_t planned_output_tokens = 0;
  int32_t input_tokens = 0;         // usage when the target reported it, else planned
  int32_t cached_input_tokens = 0;  // of input_tokens, from a prefix cache (usage)
  bool cached_reported = false;     // the target reported the count (0 may be a real 0)
  bool input_from_usage = false;
  int32_t output_tokens = 0;
  bool output_from_usage = false;
  std::vector<StageDuration> stages;
};

RequestRecord MakeRecord(int index, const RequestInput& input, const RequestOutcome& outcome,
                         int64_t run_start_ns);
// A prompt the time bound kept from being sent.
RequestRecord NotSentRecord(int index, const RequestInput& input);

struct StageStats {
  std::string stage;
  size_t count = 0;
  double mean_ms = 0.0;
  double p50_ms = 0.0;
  double p99_ms = 0.0;
};

struct RunConfig {
  double request_rate = 0.0;  // +inf: all at once
  double burstiness = 1.0;
  int max_concurrency = 0;  // 0: unlimited
  // Measurement window (GuideLLM's warm-up/cool-down): requests sent in the
  // first warmup_window_s seconds of the run, or ending in its last
  // cooldown_window_s seconds, are left out of every figure, and throughput
  // divides by the window's length rather than the run's.
  double warmup_window_s = 0.0;
  double cooldown_window_s = 0.0;
};

struct RunSummary {
  RunConfig config;
  double duration_s = 0.0;
  int num_prompts = 0;
  int completed = 0;
  int failed = 0;
  int cancelled = 0;
  int not_sent = 0;
  int excluded = 0;       // sent, but outside the measurement window
  double window_s = 0.0;  // the window's length: throughputs divide by it
  int64_t total_input_tokens = 0;
  int64_t total_output_tokens = 0;
  int64_t planned_input_tokens = 0;
  int64_t cached_input_tokens = 0;      // prefix-cache hits the target reported
  int cached_reported = 0;              // successful requests whose usage had the count
  int input_from_usage = 0;             // successful requests whose input count came from usage
  double request_throughput = 0.0;      // completed / duration
  double output_throughput = 0.0;       // output tokens / duration
  double total_token_throughput = 0.0;  // (input + output) / duration
  bool has_slo = false;
  int good_requests = 0;
  double goodput = 0.0;         // good requests / duration
  double slo_attainment = 0.0;  // good requests / prompts
  Distribution ttft_ms, tpot_ms, itl_ms, e2e_ms;
  Distribution dispatch_delay_ms;   // over every sent request
  std::vector<StageStats> stages;   // pipeline order, then unknown names
  std::vector<std::string> errors;  // distinct messages, at most a few
};

// Latencies and throughput over the successful requests (as vLLM does).
RunSummary Summarize(const RunConfig& config, const std::vector<RequestRecord>& records,
                     double duration_s, const std::vector<double>& percentiles, const Slo& slo);

// The stages pdserve reports, in pipeline order.
const std::vector<std::string>& KnownStages();

}  // namespace pdserve::loadgen
