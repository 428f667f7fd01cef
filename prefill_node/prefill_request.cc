#include "prefill_node/prefill_request.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "node/events/engine_events.h"
#include "node/events/kv_trailer.h"
#include "rpc/convert.h"

namespace pdserve::prefill {

bool OpenTransfers::Add(transport::TransferId id, std::weak_ptr<PrefillRequest> request) {
  absl::MutexLock lock(&mu_);
  return by_id_.try_emplace(id, std::move(request)).second;
}

void OpenTransfers::Remove(transport::TransferId id, const PrefillRequest* request) {
  std::shared_ptr<PrefillRequest> entry;  // may be the last reference: dropped outside mu_
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  entry = it->second.lock();
  if (entry == nullptr || entry.get() == request) by_id_.erase(it);
}

std::vector<std::shared_ptr<PrefillRequest>> OpenTransfers::Find(const std::string& request_id,
                                                                 transport::TransferId id) {
  // A transfer id names one request, and the request id must match it too,
  // so an Abort cannot reach another request's transfer by guessing.
  std::vector<std::shared_ptr<PrefillRequest>> live;  // dropped outside mu_
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [xfer, weak] : by_id_) {
      if (id.value == 0 || xfer == id) live.push_back(weak.lock());
    }
  }
  std::vector<std::shared_ptr<PrefillRequest>> found;
  for (std::shared_ptr<PrefillRequest>& r : live) {
    if (r != nullptr && r->id() == request_id) found.push_back(std::move(r));
  }
  return found;
}

// Tells the request when the router cancels; holds it until gRPC is done.
class PrefillRequest::Reactor : public grpc::ServerUnaryReactor {
 public:
  explicit Reactor(std::shared_ptr<PrefillRequest> request) : request_(std::move(request)) {}
  void OnCancel() override { request_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  const std::shared_ptr<PrefillRequest> request_;
};

grpc::ServerUnaryReactor* PrefillRequest::Start(PrefillContext* node, PrefillParams params,
                                                v1::PrefillResponse* response) {
  auto request = std::make_shared<PrefillRequest>(node, std::move(params), response);
  auto* reactor = new Reactor(request);
  request->OpenTransfer(reactor);
  request->Submit();
  return reactor;
}

PrefillRequest::PrefillRequest(PrefillContext* node, PrefillParams params,
                               v1::PrefillResponse* response)
    : node_(node), id_(params.spec.id), params_(std::move(params)), response_(response) {}

void PrefillRequest::OpenTransfer(grpc::ServerUnaryReactor* reactor) {
  {
    absl::MutexLock lock(&mu_);
    reactor_ = reactor;
    self_ = shared_from_this();
    transfer_live_ = true;
  }
  // Before the transfer exists, so an Abort by transfer id finds the
  // request while it opens (Cancel then waits for OnTransferOpened). An id
  // in use stays its first request's (the transport refuses a duplicate).
  node_->transfers.Add(params_.transfer_id, weak_from_this());
  node_->in_flight.fetch_add(1);
  std::weak_ptr<PrefillRequest> weak = weak_from_this();
  absl::StatusOr<std::unique_ptr<transport::KvSendHandle>> xfer = node_->sender->StartTransfer(
      params_.transfer_id, params_.secret, params_.kv_endpoint,
      node_->engine->model().config().n_layers, params_.deadline, [weak](absl::Status s) {
        if (std::shared_ptr<PrefillRequest> r = weak.lock()) r->OnTransferDone(s);
      });
  if (!xfer.ok()) {
    OnTransferNotOpened(xfer.status());
    return;
  }
  OnTransferOpened(*std::move(xfer));
}

void PrefillRequest::OnTransferNotOpened(const absl::Status& status) {
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    transfer_live_ = false;  // the transport never calls back
    ReplyLocked(calls, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                    absl::StrCat("cannot reach decode node KV endpoint ",
                                                 params_.kv_endpoint, ": ", status.ToString())));
    state_ = State::kEnding;
    SettleLocked(calls);
  }
  node_->transfers.Remove(params_.transfer_id, this);
  node_->in_flight.fetch_sub(1);
  Run(std::move(calls));
}

void PrefillRequest::OnTransferOpened(std::unique_ptr<transport::KvSendHandle> xfer) {
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    xfer_ = std::move(xfer);
    device_xfer_ = dynamic_cast<transport::DeviceKvSendHandle*>(xfer_.get());
    if (cancelled_ || transfer_failed_) {
      // Cancelled while opening, or the transfer already failed (its
      // callback may run before StartTransfer returns): the engine never
      // sees the request.
      calls.abort_transfer = transfer_live_;
      if (state_ != State::kDone) state_ = State::kEnding;
      SettleLocked(calls);
    } else {
      state_ = State::kSubmitting;
      engine_live_ = true;
      engine_has_blocks_ = true;
    }
  }
  Run(std::move(calls));
}

void PrefillRequest::Submit() {
  {
    absl::MutexLock lock(&mu_);
    if (state_ != State::kSubmitting) return;
  }
  std::weak_ptr<PrefillRequest> weak = weak_from_this();
  OnSubmitted(node_->engine->Submit(
      std::move(params_.spec),
      [weak](const SeqOutput& out) {
        if (std::shared_ptr<PrefillRequest> r = weak.lock()) r->OnEngineOutput(out);
      },
      SeqMode::kPrefillOnly, this));
}

void PrefillRequest::OnSubmitted(const absl::Status& status) {
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    if (!status.ok()) {
      engine_live_ = false;
      engine_has_blocks_ = false;
      ReplyLocked(calls, rpc::ToGrpc(status));
      calls.abort_transfer = transfer_live_;
      state_ = State::kEnding;
      SettleLocked(calls);
    } else {
      submitted_ = true;
      if (state_ == State::kSubmitting) state_ = State::kComputing;
      // Cancelled, or the transfer failed, while submitting.
      AbortEngineIfDueLocked(calls);
    }
  }
  Run(std::move(calls));
}

void PrefillRequest::OnLayerStored(int32_t layer, const std::vector<BlockId>& blocks) {
  SendLayer(layer, blocks, /*on_device=*/false, nullptr);
}

void PrefillRequest::OnLayerStoredOnDevice(int32_t layer, const std::vector<BlockId>& blocks,
                                           void* stored_event) {
  SendLayer(layer, blocks, /*on_device=*/true, stored_event);
}

void PrefillRequest::SendLayer(int32_t layer, const std::vector<BlockId>& blocks, bool on_device,
                               void* stored_event) {
  KvCache& cache = node_->engine->cache();
  const size_t bytes = static_cast<size_t>(cache.config().LayerBlockBytes());
  std::vector<transport::ConstBlockView> views;
  views.reserve(blocks.size());
  for (BlockId b : blocks) views.push_back({cache.BlockData(layer, b), bytes});
  // The transport orders a device copy after stored_event on its own stream.
  absl::Status s = on_device ? device_xfer_->SendLayerAfter(layer, views, stored_event)
                             : xfer_->SendLayer(layer, views);
  if (!s.ok()) {
    PDS_LOG(DEBUG) << id_ << ": layer " << layer << " not sent: " << s;
  }
  if (node_->metrics) {
    node_->metrics->kv_transfer_bytes_total->Increment(static_cast<double>(bytes) * blocks.size());
  }
}

void PrefillRequest::OnEngineOutput(const SeqOutput& out) {
  if (out.prefill_done) {
    OnFirstToken(out);
  } else if (out.finish != FinishReason::kNone) {
    OnEngineEnded(out);
  }
}

void PrefillRequest::OnFirstToken(const SeqOutput& out) {
  // Built aside: the RPC's own response may be gone (see ReplyLocked).
  v1::PrefillResponse reply = FirstTokenResponse(out);
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    engine_live_ = false;  // it holds the blocks, and calls no more
    if (state_ == State::kSubmitting || state_ == State::kComputing) {
      state_ = State::kShipping;
      // Token #1 rides with the last layer: the decode node starts from it.
      calls.trailer = node::MakeKvTrailer(out).SerializeAsString();
      calls.send_trailer = true;
      ReplyLocked(calls, grpc::Status::OK, std::move(reply));
    }
    // Else cancelled or failed while computing: the reply went out, the
    // transfer is stopping, and its end (or Submit's return) aborts the
    // engine request, which frees the held blocks.
    SettleLocked(calls);
  }
  Run(std::move(calls));
}

void PrefillRequest::OnEngineEnded(const SeqOutput& out) {
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    engine_live_ = false;
    engine_has_blocks_ = false;  // aborted or failed before token #1: freed
    ReplyLocked(calls, out.error.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "prefill aborted")
                                      : rpc::ToGrpc(out.error));
    calls.abort_transfer = transfer_live_;
    state_ = State::kEnding;
    SettleLocked(calls);
  }
  Run(std::move(calls));
}

void PrefillRequest::OnTransferDone(const absl::Status& status) {
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    transfer_live_ = false;
    if (status.ok()) {
      // The decode node has every layer: the blocks can go (kept in the
      // prefix cache).
      calls.release_engine = engine_has_blocks_;
      engine_has_blocks_ = false;
    } else {
      transfer_failed_ = true;
      // A deadline stays a deadline for the client; anything else means
      // the decode side is unreachable or refused the data.
      ReplyLocked(calls, grpc::Status(status.code() == absl::StatusCode::kDeadlineExceeded
                                          ? grpc::StatusCode::DEADLINE_EXCEEDED
                                          : grpc::StatusCode::UNAVAILABLE,
                                      absl::StrCat("KV transfer to the decode node failed: ",
                                                   status.ToString())));
      if (state_ != State::kDone) state_ = State::kEnding;
      AbortEngineIfDueLocked(calls);
    }
    SettleLocked(calls);
  }
  node_->transfers.Remove(params_.transfer_id, this);
  if (!status.ok()) {
    PDS_LOG(WARNING) << id_ << ": KV transfer failed: " << status;
    if (node_->metrics) node_->metrics->error(tracing::ErrorKind::kKvTransfer).Increment();
  }
  if (node_->metrics) {
    node_->metrics->kv_transfer_seconds_total->Increment((MonoNowNs() - params_.origin_ns) * 1e-9);
  }
  node_->in_flight.fetch_sub(1);
  Run(std::move(calls));
}

void PrefillRequest::Cancel() {
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    ReplyLocked(calls, grpc::Status::CANCELLED);
    if (state_ != State::kDone) {
      // Stopping the transfer is all: its end aborts the engine request
      // once the transport no longer reads the blocks. Not open yet: see
      // OnTransferOpened.
      calls.abort_transfer = transfer_live_ && xfer_ != nullptr;
      state_ = State::kEnding;
    }
  }
  Run(std::move(calls));
}

void PrefillRequest::ReplyLocked(Calls& calls, grpc::Status status,
                                 std::optional<v1::PrefillResponse> response) {
  if (reactor_ == nullptr) return;
  calls.finish = reactor_;
  calls.status = std::move(status);
  reactor_ = nullptr;
  // Only while the reply is not sent: then gRPC keeps `response` alive.
  if (response.has_value()) *response_ = *std::move(response);
}

void PrefillRequest::AbortEngineIfDueLocked(Calls& calls) {
  // Due: the transfer failed (a cancel aborts it), and it no longer reads
  // the blocks. It can land: Submit returned (the engine knows the id).
  if (submitted_ && engine_has_blocks_ && transfer_failed_ && !transfer_live_) {
    calls.abort_engine = true;
    engine_has_blocks_ = false;
  }
}

void PrefillRequest::SettleLocked(Calls& calls) {
  if (transfer_live_ || engine_live_ || state_ == State::kDone) return;
  state_ = State::kDone;
  calls.release_self = std::move(self_);
}

void PrefillRequest::Run(Calls calls) {
  if (calls.send_trailer) {
    if (absl::Status s = xfer_->Finish(std::move(calls.trailer)); !s.ok()) {
      PDS_LOG(DEBUG) << id_ << ": trailer not sent: " << s;
    }
  }
  if (calls.abort_transfer) xfer_->Abort();  // its callback (OnTransferDone) may run here
  if (calls.abort_engine) node_->engine->Abort(id_);
  if (calls.release_engine) node_->engine->Release(id_);
  if (calls.finish != nullptr) calls.finish->Finish(calls.status);
  // calls.release_self goes last, with `calls`.
}

v1::PrefillResponse PrefillRequest::FirstTokenResponse(const SeqOutput& out) const {
  v1::PrefillResponse r;
  r.set_token_id(out.tokens.at(0));
  r.set_text(out.text);
  if (!out.logprobs.empty()) r.set_logprob(out.logprobs[0]);
  if (!out.top_logprobs.empty()) {
    for (const TokenLogprob& t : out.top_logprobs[0]) {
      v1::TopLogprob* e = r.mutable_top_logprobs()->add_top();
      e->set_token_id(t.token);
      e->set_logprob(t.logprob);
    }
  }
  r.set_finish_reason(rpc::ToProto(out.finish));
  for (const SampleFirstToken& x : out.samples) {
    v1::PrefillResponse::Sample* e = r.add_samples();
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
  r.set_cached_prompt_tokens(out.cached_tokens);
  node::AppendStages(node::StagesOf(out.times, params_.origin_ns, node::NodeRole::kPrefill), 0,
                     node_->node_name, r.mutable_stages());
  return r;
}

}  // namespace pdserve::prefill
