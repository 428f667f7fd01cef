#include "router/generate_call.h"

#include <algorithm>

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/secure_random.h"
#include "engine/text/block_hash.h"
#include "router/dispatcher.h"
#include "rpc/convert.h"
#include "tracing/span.h"

namespace pdserve::router {
namespace {

using tracing::ErrorKind;
using tracing::Stage;

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

// A failure of a node (or of the path between two nodes) rather than of the
// request: another pair may well serve it.
bool Retryable(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kAborted ||
         code == absl::StatusCode::kDataLoss;
}

absl::Time DeadlineIn(int64_t ms) { return absl::Now() + absl::Milliseconds(ms); }

std::optional<std::string_view> Traceparent(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("traceparent");
  if (it == md.end()) return std::nullopt;
  return std::string_view(it->second.data(), it->second.size());
}

}  // namespace

GenerateCall::GenerateCall(RouterContext* ctx, int64_t arrival_ns)
    : ctx_(ctx), recorder_(ctx), arrival_ns_(arrival_ns) {}

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
    {
      absl::MutexLock lock(&call->mu_);
      call->FinishLocked(rpc::ToGrpc(spec.status()));
    }
    call->RunPosted();
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
  call->shape_.blocks_needed = static_cast<int32_t>(
      KvBlocksNeeded(n_prompt, call->spec_.stop.max_tokens, call->spec_.sampling.n, bs));
  call->shape_.prefix_hashes = HashFullBlocks(call->spec_.prompt.data(), n_prompt, bs);
  rpc::ToProto(call->spec_, &call->node_req_);

  bool duplicate = false;
  {
    absl::MutexLock lock(&ctx->calls_mu);
    auto [it, inserted] = ctx->calls.try_emplace(call->spec_.id, call);
    duplicate = !inserted && !it->second.expired();
    if (!duplicate) it->second = call;
  }
  if (duplicate) {
    {
      absl::MutexLock call_lock(&call->mu_);
      call->FinishLocked(
          grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                       absl::StrCat("request id '", call->client_id_,
                                    "' is in flight (ids are unique among your requests)")));
    }
    call->RunPosted();
    return call;
  }
  if (absl::Status s = ctx->dispatcher->Enqueue(call); !s.ok()) {
    {
      absl::MutexLock lock(&call->mu_);
      call->FailLocked(s, KindFor(s));
    }
    call->RunPosted();
    return call;
  }
  ctx->dispatcher->Pump();
  return call;
}

void GenerateCall::PostLocked(std::function<void()> fn) { posted_.push_back(std::move(fn)); }

void GenerateCall::RunPosted() {
  std::vector<std::function<void()>> batch;
  {
    absl::MutexLock lock(&mu_);
    // Another thread is running them: it picks ours up before it stops.
    if (running_posted_ || posted_.empty()) return;
    running_posted_ = true;
    batch.swap(posted_);
  }
  for (;;) {
    for (std::function<void()>& fn : batch) fn();
    batch.clear();
    absl::MutexLock lock(&mu_);
    if (posted_.empty()) {
      running_posted_ = false;
      return;
    }
    batch.swap(posted_);
  }
}

void GenerateCall::SendLocked(v1::GenerateResponse response) {
  // Shared: std::function needs a copyable closure, the response is moved once.
  auto r = std::make_shared<v1::GenerateResponse>(std::move(response));
  PostLocked([this, r] { out_->Write(std::move(*r)); });
}

void GenerateCall::Dispatch(const Selection& sel, Placement placement) {
  std::shared_ptr<GenerateCall> self = shared_from_this();
  {
    absl::MutexLock lock(&mu_);
    // Cancelled while the dispatcher chose: `placement` gives the capacity back.
    if (done_) return;
    auto attempt = std::make_shared<Attempt>();
    attempt->number = n_attempts_++;
    attempt->placement = std::move(placement);
    // Each attempt has its own id on the nodes: a node may still be
    // aborting the failed attempt's request when the retry reaches it.
    attempt->node_req = node_req_;
    if (attempt->number > 0) {
      attempt->node_req.set_request_id(
          absl::StrCat(spec_.id, migrating_ ? "~migrate" : "~retry", attempt->number));
    }
    if (migrating_) {
      // The new pair starts where the client is: prompt + the tokens it has.
      const int32_t k = static_cast<int32_t>(sent_tokens_.size());
      attempt->n_resumed = k;
      for (int32_t t : sent_tokens_) attempt->node_req.add_prompt(t);
      attempt->node_req.set_n_resumed(k);
      attempt->node_req.mutable_stop()->set_max_tokens(spec_.stop.max_tokens - k);
    }
    attempt_ = attempt;
    held_.clear();
    dispatched_ = true;
    ctx_->metrics.num_requests_running->Add(1);
    const int64_t now = MonoNowNs();
    if (attempt->number == 0) {
      dispatch_ns_ = now;
      const int64_t queued_from = timeline_.Get(Stage::kRouterTokenize)->end_offset_ns();
      timeline_.Record(Stage::kRouterQueue,
                       {queued_from, dispatch_ns_ - arrival_ns_ - queued_from});
      recorder_.Queued(dispatch_ns_ - arrival_ns_ - queued_from);
    } else {
      // Node stages of this attempt count from its own dispatch.
      dispatch_ns_ = now;
      v1::StageTiming t;
      t.set_stage(migrating_ ? "router.migrate" : "router.retry");
      t.set_start_ns(retry_from_ns_ - arrival_ns_);
      t.set_duration_ns(now - retry_from_ns_);
      t.set_node(ctx_->config.node_name);
      retry_stages_.push_back(std::move(t));
      migrating_ = false;
    }
    const std::string traceparent = tracing::StartChildSpan(span_).ToTraceparent();
    const int64_t prefill_budget_ms =
        ctx_->config.kv_deadline_ms + ctx_->config.prefill_ms_per_1k_tokens *
                                          (int64_t{attempt->node_req.prompt_size()} + 999) / 1000;
    const int64_t node_budget_ms =
        prefill_budget_ms +
        ctx_->config.decode_ms_per_token * int64_t{attempt->node_req.stop().max_tokens()};
    NodeCallOptions node_opts;
    node_opts.traceparent = traceparent;
    node_opts.deadline = DeadlineIn(node_budget_ms);
    Attempt* const a = attempt.get();
    // The node calls' callbacks hold the call and the attempt until they ran.
    auto on_event = [self, attempt](const v1::DecodeEvent& ev) {
      self->OnNodeEvent(attempt.get(), ev);
    };
    auto on_done = [self, attempt](const absl::Status& st) { self->OnNodeDone(attempt.get(), st); };

    if (sel.mixed) {
      mixed_ = true;
      attempt->mixed = true;
      decode_id_ = sel.mixed->id;
      attempt->decode_id = decode_id_;
      first_sent_ = true;  // a mixed node streams token #1 itself
      std::shared_ptr<NodeClient> client = ctx_->registry->Client(decode_id_);
      if (!client) {
        NodeFailedLocked(absl::UnavailableError("node left"), ErrorKind::kUnavailable);
      } else {
        PostLocked([a, client, node_opts, on_event, on_done] {
          a->node_call = client->Generate(a->node_req, node_opts, on_event, on_done);
        });
      }
    } else {
      prefill_id_ = sel.prefill->id;
      decode_id_ = sel.decode->id;
      attempt->prefill_id = prefill_id_;
      attempt->decode_id = decode_id_;
      std::shared_ptr<NodeClient> p_client = ctx_->registry->Client(prefill_id_);
      std::shared_ptr<NodeClient> d_client = ctx_->registry->Client(decode_id_);
      if (!p_client || !d_client) {
        attempt->placement.ReleasePrefill();
        NodeFailedLocked(absl::UnavailableError("node left"), ErrorKind::kUnavailable);
      } else {
        ctx_->registry->RememberPrefix(prefill_id_, shape_.prefix_hashes);
        // Unguessable id and a fresh secret per attempt: only this prefill node
        // can open (or block) the transfer into the decode node's blocks.
        const uint64_t xfer = SecureRandomU64();
        const std::string kv_secret = SecureRandomSecret128();
        attempt->transfer_id = xfer;
        // Admit and Prefill go out together: the decode node reserves blocks while
        // the prefill node computes, and the KV lands straight in those blocks.
        auto admit_req = std::make_shared<v1::AdmitRequest>();
        *admit_req->mutable_request() = attempt->node_req;
        admit_req->set_transfer_id(xfer);
        admit_req->set_kv_secret(kv_secret);
        admit_req->set_kv_deadline_ms(ctx_->config.kv_deadline_ms);

        auto prefill_req = std::make_shared<v1::PrefillRequest>();
        *prefill_req->mutable_request() = attempt->node_req;
        prefill_req->set_kv_endpoint(sel.decode->kv_endpoint);
        prefill_req->set_transfer_id(xfer);
        prefill_req->set_kv_secret(kv_secret);
        prefill_req->set_kv_deadline_ms(ctx_->config.kv_deadline_ms);
        NodeCallOptions prefill_opts = node_opts;
        prefill_opts.deadline = DeadlineIn(prefill_budget_ms);
        PostLocked([self, attempt, a, d_client, p_client, admit_req, prefill_req, node_opts,
                    prefill_opts, on_event, on_done] {
          a->node_call = d_client->Admit(*admit_req, node_opts, on_event, on_done);
          a->prefill_call = p_client->Prefill(
              *prefill_req, prefill_opts,
              [self, attempt](const absl::Status& st, const v1::PrefillResponse& resp) {
                self->OnPrefillDone(attempt.get(), st, resp);
              });
        });
      }
    }
  }
  RunPosted();
}

void GenerateCall::OnPrefillDone(Attempt* attempt, const absl::Status& status,
                                 const v1::PrefillResponse& response) {
  {
    absl::MutexLock lock(&mu_);
    // The prefill tokens come back whatever happened, to the attempt's registration.
    attempt->placement.ReleasePrefill();
    attempt->prefill_replied = true;
    attempt->prefill_resp = response;
    if (done_ || !Current(attempt)) {
      // Fall through to RunPosted: nothing to do.
    } else if (!status.ok()) {
      const absl::Status& s = status;
      absl::Status named(s.code(), absl::StrCat("prefill node ", prefill_id_, ": ", s.message()));
      if (s.code() == absl::StatusCode::kInvalidArgument) {
        FailLocked(named, ErrorKind::kInvalidRequest);
      } else {
        NodeFailedLocked(named, ErrorKind::kPrefillFailed);
      }
    } else if (!attempt->admitted && !attempt->node_done) {
      attempt->first_pending = true;  // sent when the decode node admits
    } else {
      FirstTokenLocked(attempt);
    }
  }
  RunPosted();
}

void GenerateCall::FirstTokenLocked(Attempt* attempt) {
  const v1::PrefillResponse& resp = attempt->prefill_resp;
  for (const v1::StageTiming& t : resp.stages()) {
    if (auto stage = tracing::StageFromName(t.stage())) {
      timeline_.Record(*stage, {dispatch_ns_ - arrival_ns_ + t.start_ns(), t.duration_ns()});
    }
  }
  // A migrated attempt's cache hits include tokens the client generated.
  if (attempt->n_resumed == 0) cached_tokens_ = resp.cached_prompt_tokens();
  // Token #1: to the client now (TTFT), then anything the decode node sent early.
  if (resp.samples_size() > 0) {
    // n > 1: token #1 of each sample, with the sample's own finish.
    for (int32_t i = 0; i < resp.samples_size(); ++i) {
      const v1::PrefillResponse::Sample& x = resp.samples(i);
      v1::Chunk c;
      c.set_index(i);
      c.add_token_ids(x.token_id());
      c.set_text(x.text());
      if (spec_.sampling.logprobs || spec_.sampling.top_logprobs > 0) {
        c.add_logprobs(x.logprob());
        *c.add_top_logprobs() = x.top_logprobs();
      }
      c.set_finish_reason(x.finish_reason());
      WriteChunkLocked(std::move(c));
    }
  } else {
    v1::Chunk first;
    first.add_token_ids(resp.token_id());
    first.set_text(resp.text());
    if (spec_.sampling.logprobs || spec_.sampling.top_logprobs > 0) {
      first.add_logprobs(resp.logprob());
      *first.add_top_logprobs() = resp.top_logprobs();
    }
    first.mutable_usage()->set_prompt_tokens(shape_.prompt_tokens);
    first.mutable_usage()->set_completion_tokens(1);
    WriteChunkLocked(std::move(first));
  }
  first_sent_ = true;
  if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    // Token #1 ended it (EOS, stop, max_tokens 1): the decode side is not needed.
    v1::Complete c;
    c.set_finish_reason(resp.finish_reason());
    c.mutable_usage()->set_prompt_tokens(shape_.prompt_tokens);
    c.mutable_usage()->set_completion_tokens(completion_tokens_);
    CancelNodeCallsLocked();
    CompleteLocked(c);
  } else {
    std::vector<v1::DecodeEvent> held;
    held.swap(held_);
    for (const v1::DecodeEvent& ev : held) {
      if (done_) break;
      if (ev.has_chunk()) WriteChunkLocked(ev.chunk());
      if (ev.has_complete()) CompleteLocked(ev.complete());
    }
    if (!done_ && attempt->node_done) {
      FailLocked(absl::InternalError("node stream ended without a result"), ErrorKind::kInternal);
    }
  }
}

void GenerateCall::OnNodeEvent(Attempt* attempt, const v1::DecodeEvent& ev) {
  {
    absl::MutexLock lock(&mu_);
    if (!done_ && Current(attempt) && (ev.has_chunk() || ev.has_complete())) {
      attempt->kv_landed = true;  // the decode node computed from it
      // A mixed node's first token: its prompt no longer queues others.
      if (attempt->mixed) attempt->placement.ReleasePrefill();
    }
    if (done_ || !Current(attempt)) {
      // Nothing to do (a superseded attempt's events are dropped).
    } else if (ev.has_admitted()) {
      attempt->admitted = true;
      if (attempt->first_pending) {
        attempt->first_pending = false;
        FirstTokenLocked(attempt);
      }
    } else if (ev.has_error()) {
      const absl::Status s(
          static_cast<absl::StatusCode>(ev.error().code()),
          absl::StrCat(mixed_ ? "node " : "decode node ", decode_id_, ": ", ev.error().message()));
      NodeFailedLocked(s, ev.error().kind() == "kv_transfer" ? ErrorKind::kKvTransfer
                                                             : ErrorKind::kDecodeFailed);
    } else if (!first_sent_) {
      held_.push_back(ev);
      // Tokens or a result from the decode node mean it admitted the
      // request: its `admitted` event can come after them, or not at all
      // when the whole stream ended first (a short request whose KV landed
      // before the node wrote it).
      if (!attempt->admitted && (ev.has_chunk() || ev.has_complete())) {
        attempt->admitted = true;
        if (attempt->first_pending) {
          attempt->first_pending = false;
          FirstTokenLocked(attempt);
        }
      }
    } else {
      if (ev.has_chunk()) WriteChunkLocked(ev.chunk());
      if (ev.has_complete()) CompleteLocked(ev.complete());
    }
  }
  RunPosted();
}

void GenerateCall::OnNodeDone(Attempt* attempt, const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (done_ || !Current(attempt)) {
      // Over already, or superseded.
    } else if (!status.ok()) {
      const absl::Status& s = status;
      NodeFailedLocked(absl::Status(s.code(), absl::StrCat(mixed_ ? "node " : "decode node ",
                                                           decode_id_, ": ", s.message())),
                       s.code() == absl::StatusCode::kResourceExhausted ? ErrorKind::kOverloaded
                                                                        : ErrorKind::kDecodeFailed);
    } else if (first_sent_ && held_.empty()) {
      FailLocked(absl::InternalError("node stream ended without a result"), ErrorKind::kInternal);
    } else {
      // The prefill reply finishes it with the held events.
      attempt->node_done = true;
      if (attempt->first_pending) {
        attempt->first_pending = false;
        FirstTokenLocked(attempt);
      }
    }
  }
  RunPosted();
}

void GenerateCall::ReportNodeFailuresLocked(const absl::Status& status) {
  if (!attempt_ || !Retryable(status.code())) return;
  // Both nodes: when the decode node dies, the prefill node's KV send may
  // fail first; a node whose connection is fine is not marked.
  const Placement& p = attempt_->placement;
  if (!p.prefill_id().empty()) ctx_->registry->ReportFailure(p.prefill_id(), p.prefill_epoch());
  if (!p.decode_id().empty()) ctx_->registry->ReportFailure(p.decode_id(), p.decode_epoch());
}

void GenerateCall::NodeFailedLocked(const absl::Status& status, ErrorKind kind) {
  if (done_) return;
  ReportNodeFailuresLocked(status);
  if (!Retryable(status.code())) {
    FailLocked(status, kind);
    return;
  }
  if (first_chunk_ns_ == 0) {
    // Nothing reached the client: another pair starts from scratch.
    if (retries_ >= ctx_->config.max_retries) {
      FailLocked(status, kind);
      return;
    }
    ++retries_;
    if (ctx_->retries != nullptr) ctx_->retries->Increment();
    PDS_LOG(INFO) << spec_.id << ": attempt " << n_attempts_ << " failed (" << status
                  << "); retrying on another pair";
  } else if (spec_.sampling.n > 1) {
    // The samples' streams cannot be resumed token-exactly on another pair
    // (docs/openai.md): an explicit error rather than a different answer.
    FailLocked(absl::Status(status.code(), absl::StrCat(status.message(),
                                                        " (a request with n > 1 samples is not "
                                                        "migrated after its first tokens)")),
               kind);
    return;
  } else {
    // Mid-stream: another pair continues from the tokens the client has.
    if (CompleteIfOverLocked()) return;
    if (migrations_ >= ctx_->config.max_retries) {
      FailLocked(absl::Status(status.code(), absl::StrCat(status.message(), " (after ", migrations_,
                                                          " migrations)")),
                 kind);
      return;
    }
    ++migrations_;
    migrating_ = true;
    if (ctx_->migrations != nullptr) ctx_->migrations->Increment();
    PDS_LOG(INFO) << spec_.id << ": attempt " << n_attempts_ << " failed after "
                  << sent_tokens_.size() << " tokens (" << status
                  << "); continuing on another pair";
  }
  RequeueLocked(status, kind);
}

bool GenerateCall::CompleteIfOverLocked() {
  if (sent_tokens_.empty()) return false;
  const int32_t last = sent_tokens_.back();
  const StopParams& stop = spec_.stop;
  const bool stopped = (!stop.ignore_eos && ctx_->prompt.tokenizer != nullptr &&
                        ctx_->prompt.tokenizer->IsEog(last)) ||
                       std::find(stop.stop_token_ids.begin(), stop.stop_token_ids.end(), last) !=
                           stop.stop_token_ids.end();
  const bool length = completion_tokens_ >= stop.max_tokens;
  if (!stopped && !length) return false;
  CancelNodeCallsLocked();
  v1::Complete c;
  c.set_finish_reason(stopped ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH);
  c.mutable_usage()->set_completion_tokens(completion_tokens_);
  CompleteLocked(c);
  return true;
}

void GenerateCall::RequeueLocked(const absl::Status& status, ErrorKind kind) {
  CancelNodeCallsLocked();
  ReleaseNodesLocked();
  // Not queued now: the dispatcher reads the shape only once it is again.
  for (const std::string& id : {attempt_->prefill_id, attempt_->decode_id}) {
    if (!id.empty()) shape_.avoid_nodes.push_back(id);
  }
  // Whatever the failed attempt's calls still report is stale from now on.
  attempt_.reset();
  retry_from_ns_ = MonoNowNs();
  held_.clear();
  first_sent_ = false;
  mixed_ = false;
  std::shared_ptr<GenerateCall> self = shared_from_this();
  PostLocked([self, status, kind] {
    if (absl::Status s = self->ctx_->dispatcher->Enqueue(self); !s.ok()) {
      {
        absl::MutexLock lock(&self->mu_);
        self->FailLocked(absl::Status(status.code(),
                                      absl::StrCat(status.message(), "; no retry: ", s.message())),
                         kind);
      }
      self->RunPosted();
      return;
    }
    self->ctx_->dispatcher->Pump();
  });
}

void GenerateCall::NodeLost(const std::string& node_id, const absl::Status& why) {
  {
    absl::MutexLock lock(&mu_);
    if (!done_ && attempt_ != nullptr) {
      const bool decode = attempt_->decode_id == node_id;
      const bool prefill = !attempt_->prefill_replied && attempt_->prefill_id == node_id;
      if (decode || prefill) {
        NodeFailedLocked(absl::UnavailableError(absl::StrCat(
                             decode ? (mixed_ ? "node " : "decode node ") : "prefill node ",
                             node_id, ": ", why.message())),
                         decode ? ErrorKind::kDecodeFailed : ErrorKind::kPrefillFailed);
      }
    }
  }
  RunPosted();
}

void GenerateCall::CancelNodeCallsLocked() {
  if (!attempt_) return;
  // Cancel can run the node call's callbacks, which take mu_: after unlocking,
  // and after the posted work that started the calls.
  const bool abort_transfer = !attempt_->mixed && attempt_->transfer_id != 0 &&
                              !attempt_->kv_landed && !attempt_->transfer_abort_sent;
  if (abort_transfer) attempt_->transfer_abort_sent = true;
  PostLocked([a = attempt_, abort_transfer, registry = ctx_->registry] {
    if (a->prefill_call) a->prefill_call->Cancel();
    if (a->node_call) a->node_call->Cancel();
    if (!abort_transfer) return;
    // Best effort: the transfer's own deadline still bounds the hold.
    if (std::shared_ptr<NodeClient> client = registry->Client(a->prefill_id)) {
      v1::NodeAbortRequest req;
      req.set_request_id(a->node_req.request_id());
      req.set_transfer_id(a->transfer_id);
      NodeCallOptions opts;
      opts.deadline = absl::Now() + absl::Seconds(2);
      client->Abort(req, opts, [](const absl::Status&) {});
    }
  });
}

void GenerateCall::WriteChunkLocked(v1::Chunk chunk) {
  const int64_t now = MonoNowNs();
  const bool first = first_chunk_ns_ == 0;
  recorder_.Chunk(first, first ? now - arrival_ns_ : now - last_chunk_ns_, chunk.token_ids_size());
  if (first) first_chunk_ns_ = now;
  last_chunk_ns_ = now;
  completion_tokens_ += chunk.token_ids_size();
  sent_tokens_.insert(sent_tokens_.end(), chunk.token_ids().begin(), chunk.token_ids().end());
  // A mixed node reports its own prefix-cache hits; for a P/D pair they
  // come from the prefill reply (the decode node never looks them up).
  if (mixed_ && !Resumed()) {
    cached_tokens_ = std::max(cached_tokens_, chunk.usage().cached_prompt_tokens());
  }
  // The client's counts: a migrated attempt's node counts from the migration.
  chunk.mutable_usage()->set_prompt_tokens(shape_.prompt_tokens);
  chunk.mutable_usage()->set_completion_tokens(completion_tokens_);
  chunk.mutable_usage()->set_cached_prompt_tokens(cached_tokens_);
  v1::GenerateResponse r;
  r.set_request_id(client_id_);
  *r.mutable_chunk() = std::move(chunk);
  SendLocked(std::move(r));
}

void GenerateCall::CompleteLocked(const v1::Complete& node_complete) {
  const int64_t now = MonoNowNs();
  v1::GenerateResponse r;
  r.set_request_id(client_id_);
  v1::Complete* c = r.mutable_complete();
  *c = node_complete;
  c->mutable_usage()->set_prompt_tokens(shape_.prompt_tokens);
  if (mixed_ && !Resumed()) {
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
  for (const v1::StageTiming& t : retry_stages_) *timings->add_stages() = t;
  timings->set_ttft_ns(first_chunk_ns_ ? first_chunk_ns_ - arrival_ns_ : 0);
  timings->set_e2e_ns(now - arrival_ns_);

  FinishedCall finished;
  finished.request_id = spec_.id;
  finished.span = &span_;
  finished.timeline = &timeline_;
  finished.arrival_ns = arrival_ns_;
  finished.arrival_unix_ns = arrival_unix_ns_;
  finished.end_ns = now;
  finished.first_chunk_ns = first_chunk_ns_;
  finished.prompt_tokens = shape_.prompt_tokens;
  finished.completion_tokens = completion_tokens_;
  finished.finish_reason = c->finish_reason();
  recorder_.Completed(finished);
  SendLocked(std::move(r));
  FinishLocked(grpc::Status::OK);
}

void GenerateCall::FailLocked(const absl::Status& status, ErrorKind kind) {
  if (done_) return;
  recorder_.Failed(kind);
  PDS_LOG(DEBUG) << spec_.id << ": " << status;
  if (first_chunk_ns_ != 0) {
    // Already streaming: say it in the stream too.
    v1::GenerateResponse r;
    r.set_request_id(client_id_);
    v1::Error* e = r.mutable_error();
    e->set_code(static_cast<int>(status.code()));
    e->set_message(std::string(status.message()));
    e->set_kind(std::string(tracing::ErrorKindName(kind)));
    SendLocked(std::move(r));
  }
  CancelNodeCallsLocked();
  FinishLocked(rpc::ToGrpc(status));
}

// The one place a call ends: frees its nodes, ends the response and leaves
// the calls map (every outcome, a cancel included, comes through here).
void GenerateCall::FinishLocked(const grpc::Status& status) {
  if (done_) return;
  done_ = true;
  ReleaseNodesLocked();
  PostLocked([this, status] { out_->Finish(status); });
  absl::MutexLock lock(&ctx_->calls_mu);
  auto it = ctx_->calls.find(spec_.id);
  if (it != ctx_->calls.end()) {
    std::shared_ptr<GenerateCall> holder = it->second.lock();
    if (holder == nullptr || holder.get() == this) ctx_->calls.erase(it);
  }
}

void GenerateCall::ReleaseNodesLocked() {
  if (!dispatched_) return;
  dispatched_ = false;
  ctx_->metrics.num_requests_running->Add(-1);
  // Prefill tokens come back in OnPrefillDone (or with the attempt).
  if (attempt_) attempt_->placement.ReleaseDecode();
}

void GenerateCall::FailQueued(const absl::Status& status, ErrorKind kind) {
  {
    absl::MutexLock lock(&mu_);
    FailLocked(status, kind);
  }
  RunPosted();
}

void GenerateCall::Cancel() {
  ctx_->dispatcher->Remove(this);  // if it is still queued
  {
    absl::MutexLock lock(&mu_);
    if (!done_) {
      recorder_.Failed(ErrorKind::kCancelled);
      // Cancelling the node calls aborts the request on both nodes.
      CancelNodeCallsLocked();
      FinishLocked(grpc::Status::CANCELLED);
    }
  }
  RunPosted();
}

void GenerateCall::Abort() {
  ctx_->dispatcher->Remove(this);  // if it is still queued
  {
    absl::MutexLock lock(&mu_);
    if (!done_) {
      CancelNodeCallsLocked();
      v1::Complete c;
      c.set_finish_reason(v1::FINISH_REASON_ABORT);
      c.mutable_usage()->set_completion_tokens(completion_tokens_);
      CompleteLocked(c);
    }
  }
  RunPosted();
}

}  // namespace pdserve::router
