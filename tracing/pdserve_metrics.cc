#include "tracing/pdserve_metrics.h"

#include <string>

#include "common/status_macros.h"

namespace pdserve::tracing {
namespace {

constexpr std::array<std::string_view, kNumFinishReasons> kFinishReasonNames = {"stop", "length",
                                                                                "abort"};
constexpr std::array<std::string_view, kNumErrorKinds> kErrorKindNames = {
    "invalid_request", "deadline",      "cancelled",   "overloaded", "unavailable",
    "prefill_failed",  "decode_failed", "kv_transfer", "internal",
};

absl::StatusOr<Histogram*> AddHistogram(MetricsRegistry& registry, const char* name,
                                        const char* help, std::vector<double> buckets) {
  PDS_ASSIGN_OR_RETURN(HistogramFamily * family,
                       registry.AddHistogram(name, help, std::move(buckets)));
  return family->Get();
}

absl::StatusOr<Gauge*> AddGauge(MetricsRegistry& registry, const char* name, const char* help) {
  PDS_ASSIGN_OR_RETURN(GaugeFamily * family, registry.AddGauge(name, help));
  return family->Get();
}

absl::StatusOr<Counter*> AddCounter(MetricsRegistry& registry, const char* name, const char* help) {
  PDS_ASSIGN_OR_RETURN(CounterFamily * family, registry.AddCounter(name, help));
  return family->Get();
}

}  // namespace

std::vector<double> TimeToFirstTokenBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
}

std::vector<double> InterTokenLatencyBuckets() {
  return {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
          0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
}

std::vector<double> RequestLatencyBuckets() {
  return {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
          30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
}

std::vector<double> StageBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,  0.1,  0.25,
          0.5,    1.0,     2.5,    5.0,   10.0,   20.0,  40.0, 80.0,  160.0, 640.0};
}

std::string_view FinishReasonName(FinishReason reason) {
  return kFinishReasonNames[static_cast<size_t>(reason)];
}

std::string_view ErrorKindName(ErrorKind kind) {
  return kErrorKindNames[static_cast<size_t>(kind)];
}

absl::StatusOr<PdserveMetrics> PdserveMetrics::Register(MetricsRegistry& registry) {
  PdserveMetrics m;
  PDS_ASSIGN_OR_RETURN(
      m.time_to_first_token_seconds,
      AddHistogram(registry, kTimeToFirstTokenSeconds,
                   "Histogram of time to first token in seconds.", TimeToFirstTokenBuckets()));
  PDS_ASSIGN_OR_RETURN(
      m.inter_token_latency_seconds,
      AddHistogram(registry, kInterTokenLatencySeconds,
                   "Histogram of inter-token latency in seconds.", InterTokenLatencyBuckets()));
  PDS_ASSIGN_OR_RETURN(m.request_time_per_output_token_seconds,
                       AddHistogram(registry, kRequestTimePerOutputTokenSeconds,
                                    "Histogram of time_per_output_token_seconds per request.",
                                    InterTokenLatencyBuckets()));
  PDS_ASSIGN_OR_RETURN(
      m.e2e_request_latency_seconds,
      AddHistogram(registry, kE2eRequestLatencySeconds,
                   "Histogram of end to end request latency in seconds.", RequestLatencyBuckets()));
  PDS_ASSIGN_OR_RETURN(m.request_queue_time_seconds,
                       AddHistogram(registry, kRequestQueueTimeSeconds,
                                    "Histogram of time spent waiting in queues in seconds.",
                                    RequestLatencyBuckets()));
  PDS_ASSIGN_OR_RETURN(
      HistogramFamily * stages,
      registry.AddHistogram(kStageSeconds,
                            "Histogram of the duration of each request stage in seconds.",
                            StageBuckets(), {"stage"}));
  for (Stage stage : AllStages()) {
    m.stage_seconds[static_cast<size_t>(stage)] = stages->Labels({std::string(StageName(stage))});
  }

  PDS_ASSIGN_OR_RETURN(
      m.num_requests_running,
      AddGauge(registry, kNumRequestsRunning, "Number of requests in model execution batches."));
  PDS_ASSIGN_OR_RETURN(
      m.num_requests_waiting,
      AddGauge(registry, kNumRequestsWaiting, "Number of requests waiting to be processed."));
  PDS_ASSIGN_OR_RETURN(
      m.kv_cache_usage_perc,
      AddGauge(registry, kKvCacheUsagePerc, "KV-cache usage. 1 means 100 percent usage."));
  PDS_ASSIGN_OR_RETURN(
      m.queued_prefill_tokens,
      AddGauge(registry, kQueuedPrefillTokens, "Number of prompt tokens queued for prefill."));

  PDS_ASSIGN_OR_RETURN(m.kv_transfer_bytes_total,
                       AddCounter(registry, kKvTransferBytesTotal,
                                  "Number of KV cache bytes shipped from prefill to decode."));
  PDS_ASSIGN_OR_RETURN(m.kv_transfer_seconds_total,
                       AddCounter(registry, kKvTransferSecondsTotal,
                                  "Seconds spent shipping KV cache from prefill to decode."));
  PDS_ASSIGN_OR_RETURN(m.prefix_cache_queries_total,
                       AddCounter(registry, kPrefixCacheQueriesTotal,
                                  "Prefix cache queries, in terms of number of queried tokens."));
  PDS_ASSIGN_OR_RETURN(m.prefix_cache_hits_total,
                       AddCounter(registry, kPrefixCacheHitsTotal,
                                  "Prefix cache hits, in terms of number of cached tokens."));
  PDS_ASSIGN_OR_RETURN(m.prompt_tokens_total, AddCounter(registry, kPromptTokensTotal,
                                                         "Number of prefill tokens processed."));
  PDS_ASSIGN_OR_RETURN(
      m.generation_tokens_total,
      AddCounter(registry, kGenerationTokensTotal, "Number of generation tokens processed."));
  PDS_ASSIGN_OR_RETURN(
      CounterFamily * success,
      registry.AddCounter(kRequestSuccessTotal, "Count of successfully processed requests.",
                          {"finish_reason"}));
  for (size_t i = 0; i < kNumFinishReasons; ++i) {
    m.request_success_total[i] = success->Labels({std::string(kFinishReasonNames[i])});
  }
  PDS_ASSIGN_OR_RETURN(CounterFamily * errors,
                       registry.AddCounter(kRequestErrorsTotal,
                                           "Count of failed requests by error kind.", {"kind"}));
  for (size_t i = 0; i < kNumErrorKinds; ++i) {
    m.request_errors_total[i] = errors->Labels({std::string(kErrorKindNames[i])});
  }
  PDS_ASSIGN_OR_RETURN(
      m.spans_dropped_total,
      AddCounter(registry, kSpansDroppedTotal, "Spans dropped because the export queue was full."));
  return m;
}

void PdserveMetrics::ObserveStages(const StageTimeline& timeline) const {
  for (const auto& [stage, interval] : timeline.Entries()) {
    stage_seconds[static_cast<size_t>(stage)]->Observe(static_cast<double>(interval.duration_ns) *
                                                       1e-9);
  }
}

}  // namespace pdserve::tracing
