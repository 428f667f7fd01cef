// Writes what the router reports about its requests: Prometheus metrics,
// OpenTelemetry spans and the per-request timing log. A GenerateCall keeps
// the facts (FinishedCall); this one place turns them into records, so the
// call's state machine never formats a metric or a log line itself.
#pragma once

#include <cstdint>
#include <string_view>

#include "pdserve/v1/generate.pb.h"
#include "router/router_context.h"
#include "tracing/stage_timeline.h"
#include "tracing/trace_context.h"

namespace pdserve::router {

// A call that completed (any finish reason, abort included).
struct FinishedCall {
  std::string_view request_id;  // as the nodes see it (scoped by tenant)
  const tracing::SpanContext* span = nullptr;
  const tracing::StageTimeline* timeline = nullptr;  // offsets from arrival
  int64_t arrival_ns = 0;                            // monotonic
  int64_t arrival_unix_ns = 0;                       // the same instant on the wall clock
  int64_t end_ns = 0;                                // monotonic
  int64_t first_chunk_ns = 0;                        // monotonic; 0: no token sent
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
};

class CallRecorder {
 public:
  explicit CallRecorder(RouterContext* ctx) : ctx_(ctx) {}

  // A chunk of `n_tokens` went to the client; `first`: it holds token #1.
  // `since_ns`: from arrival (first) or from the previous chunk.
  void Chunk(bool first, int64_t since_ns, int32_t n_tokens) const;
  // The call waited `queue_ns` in the dispatch queue before its first dispatch.
  void Queued(int64_t queue_ns) const;
  // Latency histograms, the success counter, the router's stages, the
  // timing log line and the spans (root + one per stage) when sampled.
  void Completed(const FinishedCall& call) const;
  // The call ended with an error (a cancel included).
  void Failed(tracing::ErrorKind kind) const;

 private:
  void WriteTimingLog(const FinishedCall& call) const;
  void ExportSpans(const FinishedCall& call) const;

  RouterContext* ctx_;
};

}  // namespace pdserve::router
