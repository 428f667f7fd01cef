#include "router/call_recorder.h"

#include <cstdio>
#include <string>
#include <utility>

#include "tracing/span.h"

namespace pdserve::router {

using tracing::Stage;

void CallRecorder::Chunk(bool first, int64_t since_ns, int32_t n_tokens) const {
  if (first) {
    ctx_->metrics.time_to_first_token_seconds->Observe(since_ns * 1e-9);
  } else {
    ctx_->metrics.inter_token_latency_seconds->Observe(since_ns * 1e-9);
  }
  ctx_->metrics.generation_tokens_total->Increment(n_tokens);
}

void CallRecorder::Queued(int64_t queue_ns) const {
  ctx_->metrics.request_queue_time_seconds->Observe(queue_ns * 1e-9);
}

void CallRecorder::Completed(const FinishedCall& call) const {
  ctx_->metrics.e2e_request_latency_seconds->Observe((call.end_ns - call.arrival_ns) * 1e-9);
  if (call.completion_tokens > 1) {
    ctx_->metrics.request_time_per_output_token_seconds->Observe(
        (call.end_ns - call.first_chunk_ns) * 1e-9 / (call.completion_tokens - 1));
  }
  ctx_->metrics.prompt_tokens_total->Increment(call.prompt_tokens);
  const v1::FinishReason fr = call.finish_reason;
  ctx_->metrics
      .success(fr == v1::FINISH_REASON_LENGTH  ? tracing::FinishReason::kLength
               : fr == v1::FINISH_REASON_ABORT ? tracing::FinishReason::kAbort
                                               : tracing::FinishReason::kStop)
      .Increment();
  // The nodes observe their own stages; the router only its own.
  tracing::StageTimeline router_only;
  for (Stage s : {Stage::kRouterTokenize, Stage::kRouterQueue}) {
    if (auto iv = call.timeline->Get(s)) router_only.Record(s, *iv);
  }
  ctx_->metrics.ObserveStages(router_only);
  WriteTimingLog(call);
  ExportSpans(call);
}

void CallRecorder::Failed(tracing::ErrorKind kind) const { ctx_->metrics.error(kind).Increment(); }

void CallRecorder::WriteTimingLog(const FinishedCall& call) const {
  if (ctx_->timing_log == nullptr) return;
  const std::string line =
      tracing::RequestTimingLogLine(call.request_id, call.span->trace_id.ToHex(), *call.timeline) +
      "\n";
  absl::MutexLock log_lock(&ctx_->timing_log_mu);
  std::fwrite(line.data(), 1, line.size(), ctx_->timing_log);
  std::fflush(ctx_->timing_log);
}

void CallRecorder::ExportSpans(const FinishedCall& call) const {
  if (ctx_->spans == nullptr || !call.span->sampled()) return;
  tracing::Span root;
  root.trace_id = call.span->trace_id;
  root.span_id = call.span->span_id;
  root.parent_span_id = call.span->parent_span_id;
  root.name = "pdserve.Generate";
  root.kind = tracing::SpanKind::kServer;
  root.start_unix_ns = call.arrival_unix_ns;
  root.end_unix_ns = call.arrival_unix_ns + (call.end_ns - call.arrival_ns);
  root.attributes.push_back({"pdserve.request_id", std::string(call.request_id)});
  root.attributes.push_back({"pdserve.prompt_tokens", static_cast<int64_t>(call.prompt_tokens)});
  root.attributes.push_back(
      {"pdserve.completion_tokens", static_cast<int64_t>(call.completion_tokens)});
  ctx_->spans->Export(std::move(root));
  for (tracing::Span& s : tracing::StageSpans(*call.span, *call.timeline, call.arrival_unix_ns)) {
    ctx_->spans->Export(std::move(s));
  }
}

}  // namespace pdserve::router
