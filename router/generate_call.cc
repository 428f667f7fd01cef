#include "router/generate_call.h"

#include <algorithm>

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/secure_random.h"
#include "engine/block_hash.h"
#include "router/dispatcher.h"
#include "rpc/convert.h"
#include "tracing/span.h"

namespace pdserve::router {
namespace {

using tracing::ErrorKind;
using tracing::Stage;

// Reads a node's DecodeEvent stream (decode Admit or mixed Generate) into
// the call. Deletes itself when the stream ends.
class EventReader : public grpc::ClientReadReactor<v1::DecodeEvent> {
 public:
  explicit EventReader(std::shared_ptr<GenerateCall> call) : call_(std::move(call)) {}
  void Begin() {
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    call_->OnNodeEvent(event_);
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& status) override {
    call_->OnNodeDone(status);
    delete this;
  }

 private:
  std::shared_ptr<GenerateCall> call_;
  v1::DecodeEvent event_;
};

ErrorKind KindFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
      return ErrorKind::kInvalidRequest;
    case absl::StatusCode::kDeadlineExceeded:
      return ErrorKind::kDeadline;
    case absl::StatusCode::kCancelled:
      return ErrorKind::kCancelled;
    case absl::StatusCode::kResourceExhausted:
      return ErrorKind::kOverloaded;
    case absl::StatusCode::kUnavailable:
      return ErrorKind::kUnavailable;
    default:
      return ErrorKind::kInternal;
  }
}

std::optional<std::string_view> Traceparent(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("traceparent");
  if (it == md.end()) return std::nullopt;
  return std::string_view(it->second.data(), it->second.size());
}

}  // namespace

GenerateCall::GenerateCall(RouterContext* ctx, int64_t arrival_ns)
    : ctx_(ctx), arrival_ns_(arrival_ns) {}

namespace {
// The gRPC stream as a ResponseSink.
class GrpcSink : public ResponseSink {
 public:
  explicit GrpcSink(std::shared_ptr<GenerateCall::Writer::Handle> h) : h_(std::move(h)) {}
  bool Write(v1::GenerateResponse r) override {
    grpc::ByteBuffer bytes;
    bool own_buffer;
    if (!grpc::SerializationTraits<v1::GenerateResponse>::Serialize(r, &bytes, &own_buffer).ok()) {
      return false;
    }
    return h_->Write(std::move(bytes));
  }
  void Finish(const grpc::Status& s) override { h_->Finish(s); }

 private:
  std::shared_ptr<GenerateCall::Writer::Handle> h_;
};
}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerateCall::Start(
    RouterContext* ctx, grpc::CallbackServerContext* server_ctx, const grpc::ByteBuffer* bytes,
    const std::string& tenant) {
  const int64_t arrival = MonoNowNs();
  auto weak = std::make_shared<std::weak_ptr<GenerateCall>>();
  auto* writer = new Writer(ctx->config.max_stream_events, [weak] {
    if (std::shared_ptr<GenerateCall> c = weak->lock()) c->Cancel();
  });
  std::shared_ptr<Writer::Handle> handle = writer->handle();
  v1::GenerateRequest request;
  grpc::ByteBuffer copy(*bytes);  // shares the slices; the reader needs a mutable buffer
  grpc::ProtoBufferReader reader(&copy);
  if (!request.ParseFromZeroCopyStream(&reader)) {
    ctx->metrics.error(ErrorKind::kInvalidRequest).Increment();
    handle->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "the request is not a valid pdserve.v1.GenerateRequest (every "
                                "string field, e.g. the prompt text or a stop string, must be "
                                "valid UTF-8)"));
    return writer;
  }
  std::shared_ptr<GenerateCall> call = Begin(ctx, request, tenant, Traceparent(server_ctx),
                                             std::make_shared<GrpcSink>(handle), arrival);
  *weak = call;
  if (handle->done()) call->Cancel();  // cancelled before the call existed
  return writer;
}

std::string GenerateCall::ScopedId(std::string_view tenant, std::string_view id) {
  std::string scoped(tenant);
  scoped += '/';
  scoped += id;
  return scoped;
}

std::shared_ptr<GenerateCall> GenerateCall::Begin(RouterContext* ctx,
                                                  const v1::GenerateRequest& request,
                                                  const std::string& tenant,
                                                  std::optional<std::string_view> traceparent,
                                                  std::shared_ptr<ResponseSink> sink,
                                                  int64_t arrival_ns) {
  auto call = std::make_shared<GenerateCall>(ctx, arrival_ns);
  call->arrival_unix_ns_ = tracing::WallNowUnixNs() - (MonoNowNs() - arrival_ns);
  call->span_ = tracing::StartServerSpan(traceparent);
  call->out_ = std::move(sink);

  // Validate and tokenize (router.tokenize).
  absl::StatusOr<RequestSpec> spec = rpc::BuildRequest(request, ctx->prompt);
  const int64_t tokenized = MonoNowNs();
  if (!spec.ok()) {
    ctx->metrics.error(KindFor(spec.status())).Increment();
    absl::MutexLock lock(&call->mu_);
    call->done_ = true;
    call->out_->Finish(rpc::ToGrpc(spec.status()));
    return call;
  }
  call->spec_ = std::move(*spec);
  call->client_id_ = call->spec_.id;
  call->spec_.id = ScopedId(tenant, call->client_id_);
  {
    absl::MutexLock lock(&call->mu_);
    call->timeline_.Record(Stage::kRouterTokenize, {0, tokenized - call->arrival_ns_});
  }
  const int32_t bs = std::max(1, ctx->registry->block_size());
  const int32_t n_prompt = static_cast<int32_t>(call->spec_.prompt.size());
  call->shape_.prompt_tokens = n_prompt;
  call->shape_.block_size = bs;
  call->shape_.blocks_needed = (n_prompt + call->spec_.stop.max_tokens + bs - 1) / bs;
  call->shape_.prefix_hashes = HashFullBlocks(call->spec_.prompt.data(), n_prompt, bs);
  rpc::ToProto(call->spec_, &call->node_req_);

  {
    absl::MutexLock lock(&ctx->calls_mu);
    auto [it, inserted] = ctx->calls.try_emplace(call->spec_.id, call);
    if (!inserted && !it->second.expired()) {
      absl::MutexLock call_lock(&call->mu_);
      call->done_ = true;
      call->out_->Finish(
          grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                       absl::StrCat("request id '", call->client_id_,
                                    "' is in flight (ids are unique among your requests)")));
      return call;
    }
    it->second = call;
  }
  ctx->metrics.num_requests_waiting->Add(1);
  if (absl::Status s = ctx->dispatcher->Enqueue(call); !s.ok()) {
    ctx->metrics.num_requests_waiting->Add(-1);
    absl::MutexLock lock(&call->mu_);
    call->FailLocked(s, KindFor(s));
    return call;
  }
  ctx->dispatcher->Pump();
  return call;
}

void GenerateCall::Dispatch(const Selection& sel) {
  std::shared_ptr<GenerateCall> self = shared_from_this();
  absl::MutexLock lock(&mu_);
  ctx_->metrics.num_requests_waiting->Add(-1);
  if (done_) {  // cancelled while the dispatcher chose: give the capacity back
    if (sel.mixed) ctx_->registry->DoneWork(sel.mixed->id, shape_.blocks_needed);
    if (sel.decode) ctx_->registry->DoneWork(sel.decode->id, shape_.blocks_needed);
    if (sel.prefill) ctx_->registry->DonePrefill(sel.prefill->id, shape_.prompt_tokens);
    return;
  }
  dispatched_ = true;
  ctx_->metrics.num_requests_running->Add(1);
  dispatch_ns_ = MonoNowNs();
  const int64_t queued_from = timeline_.Get(Stage::kRouterTokenize)->end_offset_ns();
  timeline_.Record(Stage::kRouterQueue, {queued_from, dispatch_ns_ - arrival_ns_ - queued_from});
  ctx_->metrics.request_queue_time_seconds->Observe((dispatch_ns_ - arrival_ns_) * 1e-9 -
                                                    queued_from * 1e-9);
  const std::string traceparent = tracing::StartChildSpan(span_).ToTraceparent();

  if (sel.mixed) {
    mixed_ = true;
    decode_id_ = sel.mixed->id;
    first_sent_ = true;  // a mixed node streams token #1 itself
    auto stub = ctx_->registry->Stub(decode_id_);
    if (!stub) {
      FailLocked(absl::UnavailableError("node left"), ErrorKind::kUnavailable);
      return;
    }
    node_ctx_.AddMetadata("traceparent", traceparent);
    auto* reader = new EventReader(self);
    stub->async()->Generate(&node_ctx_, &node_req_, reader);
    reader->Begin();
    return;
  }

  prefill_id_ = sel.prefill->id;
  decode_id_ = sel.decode->id;
  auto p_stub = ctx_->registry->Stub(prefill_id_);
  auto d_stub = ctx_->registry->Stub(decode_id_);
  if (!p_stub || !d_stub) {
    ctx_->registry->DonePrefill(prefill_id_, shape_.prompt_tokens);
    prefill_id_.clear();
    FailLocked(absl::UnavailableError("node left"), ErrorKind::kUnavailable);
    return;
  }
  ctx_->registry->RememberPrefix(prefill_id_, shape_.prefix_hashes);
  // Unguessable id and a fresh secret per attempt: only this prefill node
  // can open (or block) the transfer into the decode node's blocks.
  const uint64_t xfer = SecureRandomU64();
  const std::string kv_secret = SecureRandomSecret128();
  // Admit and Prefill go out together: the decode node reserves blocks while
  // the prefill node computes, and the KV lands straight in those blocks.
  *admit_req_.mutable_request() = node_req_;
  admit_req_.set_transfer_id(xfer);
  admit_req_.set_kv_secret(kv_secret);
  admit_req_.set_kv_deadline_ms(ctx_->config.kv_deadline_ms);
  node_ctx_.AddMetadata("traceparent", traceparent);
  auto* reader = new EventReader(self);
  d_stub->async()->Admit(&node_ctx_, &admit_req_, reader);
  reader->Begin();

  *prefill_req_.mutable_request() = node_req_;
  prefill_req_.set_kv_endpoint(sel.decode->kv_endpoint);
  prefill_req_.set_transfer_id(xfer);
  prefill_req_.set_kv_secret(kv_secret);
  prefill_req_.set_kv_deadline_ms(ctx_->config.kv_deadline_ms);
  prefill_ctx_.AddMetadata("traceparent", traceparent);
  prefill_pending_ = true;
  p_stub->async()->Prefill(&prefill_ctx_, &prefill_req_, &prefill_resp_,
                           [self](grpc::Status s) { self->OnPrefillDone(s); });
}

void GenerateCall::OnPrefillDone(const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  prefill_pending_ = false;
  ctx_->registry->DonePrefill(prefill_id_, shape_.prompt_tokens);
  if (done_) return;
  if (!status.ok()) {
    absl::Status s = rpc::FromGrpc(status);
    FailLocked(
        absl::Status(s.code(), absl::StrCat("prefill node ", prefill_id_, ": ", s.message())),
        s.code() == absl::StatusCode::kInvalidArgument ? ErrorKind::kInvalidRequest
                                                       : ErrorKind::kPrefillFailed);
    return;
  }
  for (const v1::StageTiming& t : prefill_resp_.stages()) {
    if (auto stage = tracing::StageFromName(t.stage())) {
      timeline_.Record(*stage, {dispatch_ns_ - arrival_ns_ + t.start_ns(), t.duration_ns()});
    }
  }
  cached_tokens_ = prefill_resp_.cached_prompt_tokens();
  // Token #1: to the client now (TTFT), then anything the decode node sent early.
  v1::Chunk first;
  first.add_token_ids(prefill_resp_.token_id());
  first.set_text(prefill_resp_.text());
  if (spec_.sampling.logprobs || spec_.sampling.top_logprobs > 0) {
    first.add_logprobs(prefill_resp_.logprob());
    *first.add_top_logprobs() = prefill_resp_.top_logprobs();
  }
  first.mutable_usage()->set_prompt_tokens(shape_.prompt_tokens);
  first.mutable_usage()->set_completion_tokens(1);
  WriteChunkLocked(std::move(first));
  first_sent_ = true;
  if (prefill_resp_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    // Token #1 ended it (EOS, stop, max_tokens 1): the decode side is not needed.
    v1::Complete c;
    c.set_finish_reason(prefill_resp_.finish_reason());
    c.mutable_usage()->set_prompt_tokens(shape_.prompt_tokens);
    c.mutable_usage()->set_completion_tokens(1);
    node_ctx_.TryCancel();
    CompleteLocked(c);
    return;
  }
  std::vector<v1::DecodeEvent> held;
  held.swap(held_);
  for (const v1::DecodeEvent& ev : held) {
    if (done_) break;
    if (ev.has_chunk()) WriteChunkLocked(ev.chunk());
    if (ev.has_complete()) CompleteLocked(ev.complete());
  }
}

void GenerateCall::OnNodeEvent(const v1::DecodeEvent& ev) {
  absl::MutexLock lock(&mu_);
  if (done_) return;
  if (ev.has_admitted()) return;
  if (ev.has_error()) {
    const absl::Status s(
        static_cast<absl::StatusCode>(ev.error().code()),
        absl::StrCat(mixed_ ? "node " : "decode node ", decode_id_, ": ", ev.error().message()));
    FailLocked(
        s, ev.error().kind() == "kv_transfer" ? ErrorKind::kKvTransfer : ErrorKind::kDecodeFailed);
    return;
  }
  if (!first_sent_) {
    held_.push_back(ev);
    return;
  }
  if (ev.has_chunk()) WriteChunkLocked(ev.chunk());
  if (ev.has_complete()) CompleteLocked(ev.complete());
}

void GenerateCall::OnNodeDone(const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  if (done_) return;
  if (!status.ok()) {
    absl::Status s = rpc::FromGrpc(status);
    FailLocked(absl::Status(s.code(), absl::StrCat(mixed_ ? "node " : "decode node ", decode_id_,
                                                   ": ", s.message())),
               s.code() == absl::StatusCode::kResourceExhausted ? ErrorKind::kOverloaded
                                                                : ErrorKind::kDecodeFailed);
    return;
  }
  if (!first_sent_ || !held_.empty()) return;  // the prefill reply will finish it
  FailLocked(absl::InternalError("node stream ended without a result"), ErrorKind::kInternal);
}

void GenerateCall::WriteChunkLocked(v1::Chunk chunk) {
  const int64_t now = MonoNowNs();
  if (first_chunk_ns_ == 0) {
    first_chunk_ns_ = now;
    ctx_->metrics.time_to_first_token_seconds->Observe((now - arrival_ns_) * 1e-9);
  } else {
    ctx_->metrics.inter_token_latency_seconds->Observe((now - last_chunk_ns_) * 1e-9);
  }
  last_chunk_ns_ = now;
  completion_tokens_ += chunk.token_ids_size();
  // A mixed node reports its own prefix-cache hits; for a P/D pair they
  // come from the prefill reply (the decode node never looks them up).
  if (mixed_) cached_tokens_ = std::max(cached_tokens_, chunk.usage().cached_prompt_tokens());
  chunk.mutable_usage()->set_cached_prompt_tokens(cached_tokens_);
  ctx_->metrics.generation_tokens_total->Increment(chunk.token_ids_size());
  v1::GenerateResponse r;
  r.set_request_id(client_id_);
  *r.mutable_chunk() = std::move(chunk);
  out_->Write(std::move(r));
}

void GenerateCall::CompleteLocked(const v1::Complete& node_complete) {
  const int64_t now = MonoNowNs();
  v1::GenerateResponse r;
  r.set_request_id(client_id_);
  v1::Complete* c = r.mutable_complete();
  *c = node_complete;
  c->mutable_usage()->set_prompt_tokens(shape_.prompt_tokens);
  if (mixed_) {
    cached_tokens_ = std::max(cached_tokens_, node_complete.usage().cached_prompt_tokens());
  }
  c->mutable_usage()->set_cached_prompt_tokens(cached_tokens_);
  if (c->usage().completion_tokens() < completion_tokens_) {
    c->mutable_usage()->set_completion_tokens(completion_tokens_);
  }
  c->set_prefill_node(mixed_ ? decode_id_ : prefill_id_);
  c->set_decode_node(decode_id_);
  // Node stages count from when the router sent the node its RPC.
  for (const v1::StageTiming& t : node_complete.timings().stages()) {
    if (auto stage = tracing::StageFromName(t.stage())) {
      timeline_.Record(*stage, {dispatch_ns_ - arrival_ns_ + t.start_ns(), t.duration_ns()});
    }
  }
  v1::Timings* timings = c->mutable_timings();
  timings->clear_stages();
  for (const auto& [stage, iv] : timeline_.Entries()) {
    v1::StageTiming* t = timings->add_stages();
    t->set_stage(std::string(tracing::StageName(stage)));
    t->set_start_ns(iv.start_offset_ns);
    t->set_duration_ns(iv.duration_ns);
    const bool router_stage = stage == Stage::kRouterQueue || stage == Stage::kRouterTokenize;
    const bool prefill_stage = stage == Stage::kPrefillQueue || stage == Stage::kPrefillCompute;
    t->set_node(router_stage ? ctx_->config.node_name
                             : (prefill_stage && !mixed_ ? prefill_id_ : decode_id_));
  }
  timings->set_ttft_ns(first_chunk_ns_ ? first_chunk_ns_ - arrival_ns_ : 0);
  timings->set_e2e_ns(now - arrival_ns_);

  const double e2e = (now - arrival_ns_) * 1e-9;
  ctx_->metrics.e2e_request_latency_seconds->Observe(e2e);
  if (completion_tokens_ > 1) {
    ctx_->metrics.request_time_per_output_token_seconds->Observe((now - first_chunk_ns_) * 1e-9 /
                                                                 (completion_tokens_ - 1));
  }
  ctx_->metrics.prompt_tokens_total->Increment(shape_.prompt_tokens);
  const v1::FinishReason fr = c->finish_reason();
  ctx_->metrics
      .success(fr == v1::FINISH_REASON_LENGTH  ? tracing::FinishReason::kLength
               : fr == v1::FINISH_REASON_ABORT ? tracing::FinishReason::kAbort
                                               : tracing::FinishReason::kStop)
      .Increment();
  tracing::StageTimeline router_only;
  for (Stage s : {Stage::kRouterTokenize, Stage::kRouterQueue}) {
    if (auto iv = timeline_.Get(s)) router_only.Record(s, *iv);
  }
  ctx_->metrics.ObserveStages(router_only);
  const std::string trace_id = span_.trace_id.ToHex();
  if (ctx_->timing_log != nullptr) {
    const std::string line = tracing::RequestTimingLogLine(spec_.id, trace_id, timeline_) + "\n";
    absl::MutexLock log_lock(&ctx_->timing_log_mu);
    std::fwrite(line.data(), 1, line.size(), ctx_->timing_log);
    std::fflush(ctx_->timing_log);
  }
  if (ctx_->spans != nullptr && span_.sampled()) {
    tracing::Span root;
    root.trace_id = span_.trace_id;
    root.span_id = span_.span_id;
    root.parent_span_id = span_.parent_span_id;
    root.name = "pdserve.Generate";
    root.kind = tracing::SpanKind::kServer;
    root.start_unix_ns = arrival_unix_ns_;
    root.end_unix_ns = arrival_unix_ns_ + (now - arrival_ns_);
    root.attributes.push_back({"pdserve.request_id", spec_.id});
    root.attributes.push_back(
        {"pdserve.prompt_tokens", static_cast<int64_t>(shape_.prompt_tokens)});
    root.attributes.push_back(
        {"pdserve.completion_tokens", static_cast<int64_t>(completion_tokens_)});
    ctx_->spans->Export(std::move(root));
    for (tracing::Span& s : tracing::StageSpans(span_, timeline_, arrival_unix_ns_)) {
      ctx_->spans->Export(std::move(s));
    }
  }
  out_->Write(std::move(r));
  FinishLocked(grpc::Status::OK);
}

void GenerateCall::FailLocked(const absl::Status& status, ErrorKind kind) {
  if (done_) return;
  ctx_->metrics.error(kind).Increment();
  PDS_LOG(DEBUG) << spec_.id << ": " << status;
  if (first_chunk_ns_ != 0) {
    // Already streaming: say it in the stream too.
    v1::GenerateResponse r;
    r.set_request_id(client_id_);
    v1::Error* e = r.mutable_error();
    e->set_code(static_cast<int>(status.code()));
    e->set_message(std::string(status.message()));
    e->set_kind(std::string(tracing::ErrorKindName(kind)));
    out_->Write(std::move(r));
  }
  prefill_ctx_.TryCancel();
  node_ctx_.TryCancel();
  FinishLocked(rpc::ToGrpc(status));
}

void GenerateCall::FinishLocked(const grpc::Status& status) {
  if (done_) return;
  done_ = true;
  ReleaseNodesLocked();
  out_->Finish(status);
  absl::MutexLock lock(&ctx_->calls_mu);
  auto it = ctx_->calls.find(spec_.id);
  if (it != ctx_->calls.end() && it->second.lock().get() == this) ctx_->calls.erase(it);
}

void GenerateCall::ReleaseNodesLocked() {
  if (!dispatched_) return;
  dispatched_ = false;
  ctx_->metrics.num_requests_running->Add(-1);
  // Prefill tokens come back in OnPrefillDone, which always runs.
  if (!decode_id_.empty()) ctx_->registry->DoneWork(decode_id_, shape_.blocks_needed);
}

void GenerateCall::FailQueued(const absl::Status& status, ErrorKind kind) {
  absl::MutexLock lock(&mu_);
  ctx_->metrics.num_requests_waiting->Add(-1);
  FailLocked(status, kind);
}

void GenerateCall::Cancel() {
  const bool was_queued = ctx_->dispatcher->Remove(this);
  absl::MutexLock lock(&mu_);
  if (was_queued) ctx_->metrics.num_requests_waiting->Add(-1);
  if (done_) return;
  ctx_->metrics.error(ErrorKind::kCancelled).Increment();
  // Cancelling the node calls aborts the request on both nodes.
  prefill_ctx_.TryCancel();
  node_ctx_.TryCancel();
  done_ = true;
  ReleaseNodesLocked();
  out_->Finish(grpc::Status::CANCELLED);
}

void GenerateCall::Abort() {
  const bool was_queued = ctx_->dispatcher->Remove(this);
  absl::MutexLock lock(&mu_);
  if (was_queued) ctx_->metrics.num_requests_waiting->Add(-1);
  if (done_) return;
  prefill_ctx_.TryCancel();
  node_ctx_.TryCancel();
  v1::Complete c;
  c.set_finish_reason(v1::FINISH_REASON_ABORT);
  c.mutable_usage()->set_completion_tokens(completion_tokens_);
  CompleteLocked(c);
}

}  // namespace pdserve::router
