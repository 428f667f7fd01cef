// The metrics every pdserve process exposes, in one place so all processes
// register the same names. Names follow vLLM's (`vllm:` -> `pdserve:`) and
// reuse its histogram buckets, so dashboards built for vLLM read ours.
#pragma once

#include <array>
#include <cstddef>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "tracing/metrics.h"
#include "tracing/stage_timeline.h"

namespace pdserve::tracing {

inline constexpr char kTimeToFirstTokenSeconds[] = "pdserve:time_to_first_token_seconds";
inline constexpr char kInterTokenLatencySeconds[] = "pdserve:inter_token_latency_seconds";
inline constexpr char kRequestTimePerOutputTokenSeconds[] =
    "pdserve:request_time_per_output_token_seconds";
inline constexpr char kE2eRequestLatencySeconds[] = "pdserve:e2e_request_latency_seconds";
inline constexpr char kRequestQueueTimeSeconds[] = "pdserve:request_queue_time_seconds";
inline constexpr char kStageSeconds[] = "pdserve:stage_seconds";
inline constexpr char kNumRequestsRunning[] = "pdserve:num_requests_running";
inline constexpr char kNumRequestsWaiting[] = "pdserve:num_requests_waiting";
inline constexpr char kKvCacheUsagePerc[] = "pdserve:kv_cache_usage_perc";
inline constexpr char kQueuedPrefillTokens[] = "pdserve:queued_prefill_tokens";
inline constexpr char kKvTransferBytesTotal[] = "pdserve:kv_transfer_bytes_total";
inline constexpr char kKvTransferSecondsTotal[] = "pdserve:kv_transfer_seconds_total";
inline constexpr char kPrefixCacheQueriesTotal[] = "pdserve:prefix_cache_queries_total";
inline constexpr char kPrefixCacheHitsTotal[] = "pdserve:prefix_cache_hits_total";
inline constexpr char kPromptTokensTotal[] = "pdserve:prompt_tokens_total";
inline constexpr char kGenerationTokensTotal[] = "pdserve:generation_tokens_total";
inline constexpr char kRequestSuccessTotal[] = "pdserve:request_success_total";
inline constexpr char kRequestErrorsTotal[] = "pdserve:request_errors_total";
inline constexpr char kSpansDroppedTotal[] = "pdserve:spans_dropped_total";

// vLLM's buckets for each histogram.
std::vector<double> TimeToFirstTokenBuckets();
std::vector<double> InterTokenLatencyBuckets();
std::vector<double> RequestLatencyBuckets();
// Stages span 100 us (tokenize) to minutes (generate).
std::vector<double> StageBuckets();

// `finish_reason` label values (vLLM's).
enum class FinishReason { kStop, kLength, kAbort };
inline constexpr size_t kNumFinishReasons = 3;
std::string_view FinishReasonName(FinishReason reason);  // "stop", "length", "abort"

// `kind` label values: stable error kinds, so alerts can key on them.
enum class ErrorKind {
  kInvalidRequest,  // "invalid_request": the client's fault (400).
  kDeadline,        // "deadline": the request's deadline passed.
  kCancelled,       // "cancelled": the client went away.
  kOverloaded,      // "overloaded": queues full, request refused.
  kUnavailable,     // "unavailable": no healthy node to serve it.
  kPrefillFailed,   // "prefill_failed"
  kDecodeFailed,    // "decode_failed"
  kKvTransfer,      // "kv_transfer": shipping the KV cache failed.
  kInternal,        // "internal"
};
inline constexpr size_t kNumErrorKinds = 9;
std::string_view ErrorKindName(ErrorKind kind);

// Pointers to the standard metrics, registered with every label value up
// front so the hot path never locks. Cheap to copy; valid while the registry
// lives. Processes update only what they own (the router the request
// latencies, nodes their queues and KV usage); unused metrics read 0.
struct PdserveMetrics {
  // Registers the set (idempotent for the same registry).
  static absl::StatusOr<PdserveMetrics> Register(MetricsRegistry& registry);

  Histogram* time_to_first_token_seconds = nullptr;
  Histogram* inter_token_latency_seconds = nullptr;
  Histogram* request_time_per_output_token_seconds = nullptr;
  Histogram* e2e_request_latency_seconds = nullptr;
  Histogram* request_queue_time_seconds = nullptr;
  std::array<Histogram*, kNumStages> stage_seconds{};  // Indexed by Stage.

  Gauge* num_requests_running = nullptr;
  Gauge* num_requests_waiting = nullptr;
  Gauge* kv_cache_usage_perc = nullptr;  // 0-1; usually a callback gauge.
  Gauge* queued_prefill_tokens = nullptr;

  Counter* kv_transfer_bytes_total = nullptr;
  Counter* kv_transfer_seconds_total = nullptr;
  Counter* prefix_cache_queries_total = nullptr;  // In tokens, as vLLM counts.
  Counter* prefix_cache_hits_total = nullptr;     // In tokens.
  Counter* prompt_tokens_total = nullptr;
  Counter* generation_tokens_total = nullptr;
  std::array<Counter*, kNumFinishReasons> request_success_total{};  // By FinishReason.
  std::array<Counter*, kNumErrorKinds> request_errors_total{};      // By ErrorKind.
  Counter* spans_dropped_total = nullptr;

  Histogram& stage(Stage s) const { return *stage_seconds[static_cast<size_t>(s)]; }
  Counter& success(FinishReason r) const { return *request_success_total[static_cast<size_t>(r)]; }
  Counter& error(ErrorKind k) const { return *request_errors_total[static_cast<size_t>(k)]; }

  // Feeds pdserve:stage_seconds with every stage in `timeline`. Call it with
  // the stages this process measured itself, so a stage is counted once
  // across the cluster.
  void ObserveStages(const StageTimeline& timeline) const;
};

}  // namespace pdserve::tracing
