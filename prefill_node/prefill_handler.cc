#include "prefill_node/prefill_handler.h"

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "node/events/engine_events.h"
#include "node/events/kv_trailer.h"
#include "rpc/convert.h"
#include "transport/device_send_handle.h"

namespace pdserve::prefill {

// One Prefill call, shared by the RPC reactor, the engine (as KvSink and
// through its output callback) and the transport's completion callback. It
// lives until both the engine and the transport are done with it.
struct PrefillHandler::Call : public KvSink {
  PrefillHandler* handler = nullptr;
  v1::PrefillResponse* response = nullptr;
  std::string id;
  int64_t origin_ns = 0;
  std::unique_ptr<transport::KvSendHandle> xfer;
  // xfer, when its backend takes device events (GPU backends); else null.
  transport::DeviceKvSendHandle* device_xfer = nullptr;
  std::shared_ptr<Call> self;
  std::atomic<int> holds{2};  // the engine's and the transport's
  // The transfer failed. Its Abort may have reached the engine before the
  // request did (a deadline that passed before Submit), so the engine side
  // checks this once token #1 is out and drops the held blocks itself.
  std::atomic<bool> transfer_failed{false};

  absl::Mutex mu;
  grpc::ServerUnaryReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;  // null once replied
  // The router cancelled. It may do so before the transfer or the engine
  // request exist: whoever comes second (OnCancel or the handler, which
  // sets xfer under mu and then submits) aborts what the other started.
  bool cancelled ABSL_GUARDED_BY(mu) = false;
  bool transfer_ended = false;  // guarded by PrefillHandler::calls_mu_

  // Engine thread, during the forward pass: ship this layer now. The views
  // stay valid: the engine holds the blocks until Release or Abort, which
  // come only after the transfer completed.
  void OnLayerStored(int32_t layer, const std::vector<BlockId>& blocks) override {
    KvCache& cache = handler->engine_->cache();
    const size_t bytes = static_cast<size_t>(cache.config().LayerBlockBytes());
    std::vector<transport::ConstBlockView> views;
    views.reserve(blocks.size());
    for (BlockId b : blocks) views.push_back({cache.BlockData(layer, b), bytes});
    if (absl::Status s = xfer->SendLayer(layer, views); !s.ok()) {
      PDS_LOG(DEBUG) << id << ": layer " << layer << " not sent: " << s;
    }
    if (handler->metrics_) {
      handler->metrics_->kv_transfer_bytes_total->Increment(static_cast<double>(bytes) *
                                                            blocks.size());
    }
  }

  // GPU engines: hand the layer over with its device event, so neither the
  // engine nor this thread waits for the GPU (the transport orders its copy
  // after the event on its own stream).
  bool TakesDeviceEvents() const override { return device_xfer != nullptr; }
  void OnLayerStoredOnDevice(int32_t layer, const std::vector<BlockId>& blocks,
                             void* stored_event) override {
    KvCache& cache = handler->engine_->cache();
    const size_t bytes = static_cast<size_t>(cache.config().LayerBlockBytes());
    std::vector<transport::ConstBlockView> views;
    views.reserve(blocks.size());
    for (BlockId b : blocks) views.push_back({cache.BlockData(layer, b), bytes});
    if (absl::Status s = device_xfer->SendLayerAfter(layer, views, stored_event); !s.ok()) {
      PDS_LOG(DEBUG) << id << ": layer " << layer << " not sent: " << s;
    }
    if (handler->metrics_) {
      handler->metrics_->kv_transfer_bytes_total->Increment(static_cast<double>(bytes) *
                                                            blocks.size());
    }
  }

  // Answers the RPC once; later calls do nothing.
  void Reply(const grpc::Status& status) {
    grpc::ServerUnaryReactor* r;
    {
      absl::MutexLock lock(&mu);
      r = reactor;
      reactor = nullptr;
    }
    if (r != nullptr) r->Finish(status);
  }

  // Answers the RPC with token #1, unless it was answered already (a failed
  // transfer, a cancel): then gRPC may have freed `response`, so it is not
  // touched.
  void ReplyWith(v1::PrefillResponse r) {
    grpc::ServerUnaryReactor* to_finish;
    {
      absl::MutexLock lock(&mu);
      to_finish = reactor;
      reactor = nullptr;
      if (to_finish != nullptr) *response = std::move(r);
    }
    if (to_finish != nullptr) to_finish->Finish(grpc::Status::OK);
  }

  void Drop() {
    if (holds.fetch_sub(1) == 1) self.reset();
  }

  // The router gave up (its RPC cancelled, or Abort after the reply): stop
  // shipping, then drop the request (the transport no longer reads the
  // blocks once Abort returns). Before Submit the engine does not know the
  // request yet: the handler checks `cancelled` after it.
  void Cancel(Engine* engine) {
    Reply(grpc::Status::CANCELLED);
    transport::KvSendHandle* x;
    {
      absl::MutexLock lock(&mu);
      cancelled = true;
      x = xfer.get();
    }
    if (x != nullptr) x->Abort();
    engine->Abort(id);
  }
};

namespace {
// A unary reactor that tells the call when the router cancels.
class PrefillReactor : public grpc::ServerUnaryReactor {
 public:
  explicit PrefillReactor(std::function<void()> on_cancel) : on_cancel_(std::move(on_cancel)) {}
  void OnCancel() override {
    if (on_cancel_) on_cancel_();
  }
  void OnDone() override { delete this; }

 private:
  std::function<void()> on_cancel_;
};
}  // namespace

PrefillHandler::PrefillHandler(Engine* engine, transport::KvSender* sender, std::string node_name,
                               const tracing::PdserveMetrics* metrics)
    : engine_(engine), sender_(sender), node_name_(std::move(node_name)), metrics_(metrics) {}

grpc::ServerUnaryReactor* PrefillHandler::Prefill(grpc::CallbackServerContext* ctx,
                                                  const v1::PrefillRequest* request,
                                                  v1::PrefillResponse* response) {
  auto call = std::make_shared<Call>();
  call->handler = this;
  call->response = response;
  call->origin_ns = MonoNowNs();
  RequestSpec spec = rpc::FromProto(request->request());
  call->id = spec.id;  // before the reactor exists: OnCancel reads it
  std::weak_ptr<Call> weak = call;
  Engine* engine = engine_;
  auto* reactor = new PrefillReactor([weak, engine] {
    if (std::shared_ptr<Call> c = weak.lock()) c->Cancel(engine);
  });
  {
    absl::MutexLock lock(&call->mu);
    call->reactor = reactor;
  }
  if (absl::Status s = ValidateRequest(spec, engine_->limits()); !s.ok()) {
    call->Reply(rpc::ToGrpc(s));
    return reactor;
  }
  // Everything from the request that reaches the transport is checked first:
  // the node connects only to a well-formed endpoint, with a bounded budget.
  absl::StatusOr<transport::TransferSecret> secret =
      transport::TransferSecret::FromBytes(request->kv_secret());
  absl::StatusOr<std::chrono::milliseconds> budget =
      transport::KvBudgetFromRequest(request->kv_deadline_ms());
  absl::Status invalid = transport::ValidateKvEndpoint(request->kv_endpoint());
  if (invalid.ok() && request->transfer_id() == 0) {
    invalid = absl::InvalidArgumentError("transfer_id is not set");
  }
  if (invalid.ok() && !secret.ok()) {
    invalid = absl::InvalidArgumentError(absl::StrCat("kv_secret: ", secret.status().message()));
  }
  if (invalid.ok() && !budget.ok()) invalid = budget.status();
  if (!invalid.ok()) {
    call->Reply(rpc::ToGrpc(invalid));
    return reactor;
  }
  const transport::Deadline deadline = MonoClock::now() + *budget;
  const std::string id = call->id;
  const tracing::PdserveMetrics* metrics = metrics_;
  std::atomic<int64_t>* in_flight = &in_flight_;
  const int64_t start_ns = call->origin_ns;

  // The transfer completes on a transport thread: then the blocks can go
  // (kept in the prefix cache), or the request is dropped if it failed.
  auto xfer = sender_->StartTransfer(
      transport::TransferId{request->transfer_id()}, *secret, request->kv_endpoint(),
      engine_->model().config().n_layers, deadline,
      [this, xfer_id = request->transfer_id(), engine, id, metrics, in_flight, weak,
       start_ns](absl::Status s) {
        std::shared_ptr<Call> c = weak.lock();
        Forget(xfer_id, c.get());
        // Marked before the Abort: an Abort posted before the engine knows
        // the request is dropped, and then the engine side must see this
        // once token #1 is out.
        if (c && !s.ok()) c->transfer_failed.store(true);
        if (s.ok()) {
          engine->Release(id);
        } else {
          PDS_LOG(WARNING) << id << ": KV transfer failed: " << s;
          if (metrics) metrics->error(tracing::ErrorKind::kKvTransfer).Increment();
          engine->Abort(id);
        }
        if (metrics) metrics->kv_transfer_seconds_total->Increment((MonoNowNs() - start_ns) * 1e-9);
        in_flight->fetch_sub(1);
        if (c) {
          if (!s.ok()) {
            // A deadline stays a deadline for the client; anything else
            // means the decode side is unreachable or refused the data.
            c->Reply(grpc::Status(
                s.code() == absl::StatusCode::kDeadlineExceeded
                    ? grpc::StatusCode::DEADLINE_EXCEEDED
                    : grpc::StatusCode::UNAVAILABLE,
                absl::StrCat("KV transfer to the decode node failed: ", s.ToString())));
          }
          c->Drop();
        }
      });
  if (!xfer.ok()) {
    call->Reply(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                             absl::StrCat("cannot reach decode node KV endpoint ",
                                          request->kv_endpoint(), ": ", xfer.status().ToString())));
    return reactor;
  }
  in_flight_.fetch_add(1);
  bool cancelled;
  {
    absl::MutexLock lock(&call->mu);
    call->xfer = std::move(*xfer);
    cancelled = call->cancelled;
  }
  call->device_xfer = dynamic_cast<transport::DeviceKvSendHandle*>(call->xfer.get());
  call->self = call;
  {
    // Not if the transfer already ended (its callback ran inside
    // StartTransfer or since): nothing would remove the entry.
    absl::MutexLock lock(&calls_mu_);
    if (!call->transfer_ended) calls_[request->transfer_id()] = call;
  }
  if (cancelled) {        // before the transfer existed: nothing reaches the engine
    call->xfer->Abort();  // its callback drops the transport's hold
    call->Drop();
    return reactor;
  }

  const std::string node = node_name_;
  absl::Status submitted = engine_->Submit(
      std::move(spec),
      [weak, node, engine](const SeqOutput& out) {
        std::shared_ptr<Call> c = weak.lock();
        if (!c) return;
        if (!out.prefill_done) {
          if (out.finish != FinishReason::kNone) {  // aborted or failed before token #1
            c->Reply(out.error.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "prefill aborted")
                                    : rpc::ToGrpc(out.error));
            c->xfer->Abort();
            c->Drop();
          }
          return;
        }
        // Built aside: the RPC's own response may be gone (see ReplyWith).
        v1::PrefillResponse reply;
        v1::PrefillResponse* r = &reply;
        r->set_token_id(out.tokens.at(0));
        r->set_text(out.text);
        if (!out.logprobs.empty()) r->set_logprob(out.logprobs[0]);
        if (!out.top_logprobs.empty()) {
          for (const TokenLogprob& t : out.top_logprobs[0]) {
            v1::TopLogprob* e = r->mutable_top_logprobs()->add_top();
            e->set_token_id(t.token);
            e->set_logprob(t.logprob);
          }
        }
        r->set_finish_reason(rpc::ToProto(out.finish));
        for (const SampleFirstToken& x : out.samples) {
          v1::PrefillResponse::Sample* e = r->add_samples();
          e->set_token_id(x.token);
          e->set_text(x.text);
          e->set_logprob(x.logprob);
          for (const TokenLogprob& t : x.top) {
            v1::TopLogprob* tl = e->mutable_top_logprobs()->add_top();
            tl->set_token_id(t.token);
            tl->set_logprob(t.logprob);
          }
          e->set_finish_reason(rpc::ToProto(x.finish));
        }
        r->set_cached_prompt_tokens(out.cached_tokens);
        node::AppendStages(node::StagesOf(out.times, c->origin_ns, node::NodeRole::kPrefill), 0,
                           node, r->mutable_stages());
        // Token #1 rides with the last layer: the decode node starts from it.
        if (absl::Status fin = c->xfer->Finish(node::MakeKvTrailer(out).SerializeAsString());
            !fin.ok()) {
          PDS_LOG(DEBUG) << c->id << ": trailer not sent: " << fin;
        }
        c->ReplyWith(std::move(reply));
        // Nobody releases the blocks of a transfer that already failed.
        if (c->transfer_failed.load()) engine->Abort(c->id);
        c->Drop();  // the engine is done with the sink
      },
      SeqMode::kPrefillOnly, call.get());
  if (!submitted.ok()) {
    call->Reply(rpc::ToGrpc(submitted));
    call->xfer->Abort();  // its callback drops the transport's hold
    call->Drop();
    return reactor;
  }
  {
    absl::MutexLock lock(&call->mu);
    cancelled = call->cancelled;
  }
  // Cancelled while submitting: OnCancel's Abort may have reached the engine
  // before the request did.
  if (cancelled) engine_->Abort(id);
  return reactor;
}

void PrefillHandler::Forget(uint64_t transfer_id, Call* call) {
  absl::MutexLock lock(&calls_mu_);
  if (call != nullptr) call->transfer_ended = true;
  calls_.erase(transfer_id);
}

bool PrefillHandler::Abort(const std::string& request_id, uint64_t transfer_id) {
  // A transfer id names one call, and the request id must match it too, so
  // an Abort cannot reach another request's transfer by guessing.
  std::vector<std::shared_ptr<Call>> found;
  {
    absl::MutexLock lock(&calls_mu_);
    for (const auto& [xfer, weak] : calls_) {
      if (transfer_id != 0 && xfer != transfer_id) continue;
      std::shared_ptr<Call> c = weak.lock();
      if (c && c->id == request_id) found.push_back(std::move(c));
    }
  }
  // Outside calls_mu_: the transfer's callback takes it.
  for (const std::shared_ptr<Call>& c : found) c->Cancel(engine_);
  // By request id alone, and no transfer of it open: the engine may still
  // hold it (queued, computing before StartTransfer returned) or nothing.
  if (found.empty() && transfer_id == 0) engine_->Abort(request_id);
  return !found.empty();
}

}  // namespace pdserve::prefill
