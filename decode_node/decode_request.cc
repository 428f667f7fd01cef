#include "decode_node/decode_request.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "node/events/engine_events.h"
#include "node/events/kv_trailer.h"
#include "rpc/convert.h"

namespace pdserve::decode {

grpc::ServerWriteReactor<v1::DecodeEvent>* DecodeRequest::Start(DecodeContext* node,
                                                                DecodeParams params) {
  auto request = std::make_shared<DecodeRequest>(node, std::move(params));
  std::weak_ptr<DecodeRequest> weak = request;
  auto* writer = new Writer(node->max_stream_events, [weak] {
    if (std::shared_ptr<DecodeRequest> r = weak.lock()) r->Cancel();
  });
  request->out_ = writer->handle();
  std::optional<std::vector<BlockId>> blocks = request->Reserve();
  if (!blocks.has_value()) return writer;
  const auto n_blocks = static_cast<int32_t>(blocks->size());
  if (request->Post(*std::move(blocks))) request->Admitted(n_blocks);
  return writer;
}

DecodeRequest::DecodeRequest(DecodeContext* node, DecodeParams params)
    : node_(node), id_(params.spec.id), params_(std::move(params)) {}

std::optional<std::vector<BlockId>> DecodeRequest::Reserve() {
  std::shared_ptr<DecodeRequest> self = shared_from_this();
  absl::StatusOr<std::vector<BlockId>> blocks = node_->engine->Reserve(
      std::move(params_.spec), [self](const SeqOutput& out) { self->OnEngineOutput(out); });
  Calls calls;
  bool posting = false;
  {
    absl::MutexLock lock(&mu_);
    if (!blocks.ok()) {
      state_ = State::kDone;
      calls.finish = true;
      calls.status = rpc::ToGrpc(blocks.status());
    } else {
      reserved_ = true;
      if (cancelled_ || engine_ended_) {
        // Cancelled while reserving (or the engine already ended it):
        // nothing was posted, so nothing writes into the blocks.
        state_ = State::kDone;
        AbortEngineIfDueLocked(calls);
      } else {
        state_ = State::kPosting;
        post_live_ = true;
        posting = true;
      }
    }
  }
  if (!blocks.ok() && node_->metrics &&
      blocks.status().code() == absl::StatusCode::kResourceExhausted) {
    node_->metrics->error(tracing::ErrorKind::kOverloaded).Increment();
  }
  Run(std::move(calls));
  if (!posting) return std::nullopt;
  return *std::move(blocks);
}

bool DecodeRequest::Post(std::vector<BlockId> blocks) {
  // Each layer of each reserved block is one destination view.
  KvCache& cache = node_->engine->cache();
  const size_t bytes = static_cast<size_t>(cache.config().LayerBlockBytes());
  std::vector<std::vector<transport::BlockView>> layers(cache.config().n_layers);
  for (int32_t l = 0; l < cache.config().n_layers; ++l) {
    for (BlockId b : blocks) layers[l].push_back({cache.BlockData(l, b), bytes});
  }
  std::weak_ptr<DecodeRequest> weak = weak_from_this();
  absl::Status posted = node_->receiver->Post(
      params_.transfer_id, params_.secret, std::move(layers), MonoClock::now() + params_.kv_budget,
      [weak](absl::Status s, std::string trailer, transport::ReceiveTiming timing) {
        if (std::shared_ptr<DecodeRequest> r = weak.lock()) {
          r->OnKvLanded(std::move(s), trailer, timing);
        }
      });
  Calls calls;
  bool admit = false;
  {
    absl::MutexLock lock(&mu_);
    if (!posted.ok()) {
      post_live_ = false;  // its callback never runs
      kv_failed_ = true;
      if (state_ != State::kDone) {
        state_ = State::kDone;
        calls.finish = true;
        // The receiving half of the transfer refused it (the sender gave
        // up first, an id in use): said as a KV transfer failure, as when
        // it fails later.
        calls.status = grpc::Status(static_cast<grpc::StatusCode>(posted.code()),
                                    absl::StrCat("KV transfer failed: ", posted.ToString()));
      }
      AbortEngineIfDueLocked(calls);
    } else if (cancelled_ || state_ == State::kDone) {
      // Cancelled while posting (the Post is there now, so Cancel finds
      // it, and its callback aborts the request), or the request ended.
      calls.cancel_post = post_live_;
      state_ = State::kDone;
      AbortEngineIfDueLocked(calls);
    } else {
      admit = true;
    }
  }
  Run(std::move(calls));
  return admit;
}

void DecodeRequest::Admitted(int32_t n_blocks) {
  v1::DecodeEvent admitted;
  admitted.mutable_admitted()->set_blocks(n_blocks);
  out_->Write(std::move(admitted));
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    // Else it ended meanwhile, and that event did what was needed.
    if (state_ == State::kPosting) {
      if (cancelled_) {
        calls.cancel_post = post_live_;
        state_ = State::kDone;
        AbortEngineIfDueLocked(calls);
      } else if (landed_early_) {
        state_ = State::kDecoding;
        calls.activate = true;
        calls.first_tokens = std::move(first_tokens_);
      } else {
        state_ = State::kAwaitingKv;
      }
    }
  }
  Run(std::move(calls));
}

void DecodeRequest::OnKvLanded(absl::Status status, const std::string& trailer,
                               transport::ReceiveTiming timing) {
  // Token #1 (of each sample, n > 1), from a peer: checked before use.
  std::vector<TokenId> firsts;
  if (status.ok()) {
    absl::StatusOr<std::vector<TokenId>> parsed =
        node::ParseKvTrailer(trailer, node_->engine->model().config().n_vocab);
    if (parsed.ok()) {
      firsts = *std::move(parsed);
    } else {
      status = parsed.status();
    }
  }
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    post_live_ = false;  // nothing writes into the blocks any more
    if (status.ok()) {
      kv_first_ns_ = timing.first_layer_ns;
      kv_last_ns_ = timing.last_layer_ns;
      if (state_ == State::kPosting && !cancelled_) {
        landed_early_ = true;  // Admitted activates it, after `admitted`
        first_tokens_ = std::move(firsts);
      } else if (state_ == State::kAwaitingKv) {
        state_ = State::kDecoding;
        calls.activate = true;
        calls.first_tokens = std::move(firsts);
      }
      // Else cancelled, or the engine ended it: the blocks can go now.
    } else {
      kv_failed_ = true;
      if (state_ != State::kDone) FailLocked(calls, status);
    }
    AbortEngineIfDueLocked(calls);
  }
  if (!status.ok() && node_->metrics) {
    node_->metrics->error(tracing::ErrorKind::kKvTransfer).Increment();
  }
  Run(std::move(calls));
}

void DecodeRequest::OnEngineOutput(const SeqOutput& out) {
  const bool ends = node::EndsRequest(out);
  Calls calls;
  int64_t kv_first_ns = 0, kv_last_ns = 0;
  {
    absl::MutexLock lock(&mu_);
    if (ends) engine_ended_ = true;
    // Done: a failed transfer or a cancel already ended the stream.
    if (state_ == State::kDone) return;
    kv_first_ns = kv_first_ns_;
    kv_last_ns = kv_last_ns_;
    if (ends) {
      state_ = State::kDone;
      // The engine ended it before its KV landed (stopped, or aborted by
      // id): the transfer must not write into the freed blocks.
      calls.cancel_post = post_live_;
    }
  }
  if (node::WantsChunk(out)) {
    v1::DecodeEvent ev;
    node::FillChunk(out, ev.mutable_chunk());
    calls.events.push_back(std::move(ev));
    if (node_->metrics) {
      node_->metrics->generation_tokens_total->Increment(static_cast<double>(out.tokens.size()));
    }
  }
  if (ends) {
    calls.events.push_back(CompleteEvent(out, kv_first_ns, kv_last_ns));
    calls.finish = true;
    calls.status = out.finish == FinishReason::kError ? rpc::ToGrpc(out.error) : grpc::Status::OK;
  }
  Run(std::move(calls));
}

void DecodeRequest::Cancel() {
  Calls calls;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    switch (state_) {
      case State::kReserving:
      case State::kPosting:
        break;  // Start acts on it once Reserve or Post returned
      case State::kAwaitingKv:
        // Stop the transfer first: its callback then aborts the request.
        calls.cancel_post = post_live_;
        state_ = State::kDone;
        break;
      case State::kDecoding:
        state_ = State::kDone;
        break;
      case State::kDone:
        break;
    }
    AbortEngineIfDueLocked(calls);
  }
  Run(std::move(calls));
}

void DecodeRequest::FailLocked(Calls& calls, const absl::Status& status) {
  v1::DecodeEvent ev;
  v1::Error* e = ev.mutable_error();
  e->set_code(static_cast<int>(status.code()));
  e->set_message(absl::StrCat("KV transfer failed: ", status.ToString()));
  e->set_kind("kv_transfer");
  calls.status = grpc::Status(static_cast<grpc::StatusCode>(status.code()), e->message());
  calls.events.push_back(std::move(ev));
  calls.finish = true;
  state_ = State::kDone;
}

void DecodeRequest::AbortEngineIfDueLocked(Calls& calls) {
  // Due: cancelled or failed, and the engine still has it. Safe: Reserve
  // returned (the engine knows the id) and no Post of the blocks is live.
  if (reserved_ && !engine_ended_ && !abort_posted_ && !post_live_ && (cancelled_ || kv_failed_)) {
    abort_posted_ = true;
    calls.abort_engine = true;
  }
}

void DecodeRequest::Run(Calls calls) {
  // Its callback (OnKvLanded) runs before Cancel returns.
  if (calls.cancel_post) node_->receiver->Cancel(params_.transfer_id).IgnoreError();
  if (calls.abort_engine) node_->engine->Abort(id_);
  if (calls.activate) node_->engine->Activate(id_, std::move(calls.first_tokens));
  for (v1::DecodeEvent& ev : calls.events) out_->Write(std::move(ev));
  if (calls.finish) out_->Finish(calls.status);
}

v1::DecodeEvent DecodeRequest::CompleteEvent(const SeqOutput& out, int64_t kv_first_ns,
                                             int64_t kv_last_ns) const {
  v1::DecodeEvent done;
  v1::Complete* c = done.mutable_complete();
  c->set_finish_reason(rpc::ToProto(out.finish));
  node::FillUsage(out, c->mutable_usage());
  tracing::StageTimeline stages =
      node::StagesOf(out.times, params_.origin_ns, node::NodeRole::kDecode);
  // kv.transfer: the first layer landing to the last, on this node's clock
  // (it overlaps prefill.compute and decode.wait_kv by design).
  if (kv_first_ns > 0 && kv_last_ns >= kv_first_ns) {
    stages.Record(tracing::Stage::kKvTransfer,
                  {kv_first_ns - params_.origin_ns, kv_last_ns - kv_first_ns});
  }
  node::AppendStages(stages, 0, node_->node_name, c->mutable_timings()->mutable_stages());
  if (node_->metrics) node_->metrics->ObserveStages(stages);
  c->set_decode_node(node_->node_name);
  return done;
}

}  // namespace pdserve::decode
