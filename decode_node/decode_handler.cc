#include "decode_node/decode_handler.h"

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "node/events/engine_events.h"
#include "node/events/kv_trailer.h"
#include "rpc/convert.h"
#include "rpc/stream_writer.h"

namespace pdserve::decode {

using Writer = rpc::StreamWriter<v1::DecodeEvent>;

struct DecodeHandler::Call {
  std::string id;
  int64_t origin_ns = 0;
  std::shared_ptr<Writer::Handle> out;
  std::atomic<bool> failed{false};  // KV never arrived: the error is already sent
  // The router cancelled. It may before the blocks are reserved and posted
  // (then its Cancel and Abort find nothing): the handler checks this after
  // Post and cancels what it started.
  std::atomic<bool> cancelled{false};
  // When the first and the last KV layer landed (set before Activate, so
  // before any output).
  int64_t kv_first_ns = 0, kv_last_ns = 0;
};

DecodeHandler::DecodeHandler(Engine* engine, transport::KvReceiver* receiver, std::string node_name,
                             const tracing::PdserveMetrics* metrics, size_t max_stream_events)
    : engine_(engine),
      receiver_(receiver),
      node_name_(std::move(node_name)),
      metrics_(metrics),
      max_stream_events_(max_stream_events) {}

grpc::ServerWriteReactor<v1::DecodeEvent>* DecodeHandler::Admit(grpc::CallbackServerContext* ctx,
                                                                const v1::AdmitRequest* request) {
  auto call = std::make_shared<Call>();
  call->origin_ns = MonoNowNs();
  RequestSpec spec = rpc::FromProto(request->request());
  call->id = spec.id;
  const transport::TransferId xfer{request->transfer_id()};
  // Everything from the request that reaches the transport is checked first.
  absl::StatusOr<transport::TransferSecret> secret =
      transport::TransferSecret::FromBytes(request->kv_secret());
  absl::StatusOr<std::chrono::milliseconds> budget =
      transport::KvBudgetFromRequest(request->kv_deadline_ms());
  absl::Status invalid;
  if (xfer.value == 0) {
    invalid = absl::InvalidArgumentError("transfer_id is not set");
  } else if (!secret.ok()) {
    invalid = absl::InvalidArgumentError(absl::StrCat("kv_secret: ", secret.status().message()));
  } else if (!budget.ok()) {
    invalid = budget.status();
  }
  Engine* engine = engine_;
  transport::KvReceiver* receiver = receiver_;
  const std::string id = call->id;

  // The router cancelling (client gone, deadline) stops the transfer first,
  // so nothing writes into the blocks, then frees them.
  std::weak_ptr<Call> weak = call;
  auto* writer = new Writer(max_stream_events_, [weak, engine, receiver, xfer, id] {
    if (std::shared_ptr<Call> c = weak.lock()) c->cancelled.store(true);
    receiver->Cancel(xfer).IgnoreError();
    engine->Abort(id);
  });
  call->out = writer->handle();
  if (!invalid.ok()) {
    call->out->Finish(rpc::ToGrpc(invalid));
    return writer;
  }

  const std::string node = node_name_;
  const tracing::PdserveMetrics* metrics = metrics_;
  auto on_output = [call, node, metrics](const SeqOutput& out) {
    if (call->failed.load()) return;
    v1::DecodeEvent ev;
    if (node::WantsChunk(out)) {
      node::FillChunk(out, ev.mutable_chunk());
      call->out->Write(ev);
      if (metrics)
        metrics->generation_tokens_total->Increment(static_cast<double>(out.tokens.size()));
    }
    if (!node::EndsRequest(out)) return;
    v1::DecodeEvent done;
    v1::Complete* c = done.mutable_complete();
    c->set_finish_reason(rpc::ToProto(out.finish));
    node::FillUsage(out, c->mutable_usage());
    tracing::StageTimeline stages =
        node::StagesOf(out.times, call->origin_ns, node::NodeRole::kDecode);
    // kv.transfer: the first layer landing to the last, on this node's clock
    // (it overlaps prefill.compute and decode.wait_kv by design).
    if (call->kv_first_ns > 0 && call->kv_last_ns >= call->kv_first_ns) {
      stages.Record(tracing::Stage::kKvTransfer,
                    {call->kv_first_ns - call->origin_ns, call->kv_last_ns - call->kv_first_ns});
    }
    node::AppendStages(stages, 0, node, c->mutable_timings()->mutable_stages());
    if (metrics) metrics->ObserveStages(stages);
    c->set_decode_node(node);
    call->out->Write(done);
    call->out->Finish(out.finish == FinishReason::kError ? rpc::ToGrpc(out.error)
                                                         : grpc::Status::OK);
  };

  absl::StatusOr<std::vector<BlockId>> blocks = engine_->Reserve(std::move(spec), on_output);
  if (!blocks.ok()) {
    if (metrics_ && blocks.status().code() == absl::StatusCode::kResourceExhausted) {
      metrics_->error(tracing::ErrorKind::kOverloaded).Increment();
    }
    call->out->Finish(rpc::ToGrpc(blocks.status()));
    return writer;
  }

  // Each layer of each reserved block is one destination view.
  KvCache& cache = engine_->cache();
  const size_t bytes = static_cast<size_t>(cache.config().LayerBlockBytes());
  std::vector<std::vector<transport::BlockView>> layers(cache.config().n_layers);
  for (int32_t l = 0; l < cache.config().n_layers; ++l) {
    for (BlockId b : *blocks) layers[l].push_back({cache.BlockData(l, b), bytes});
  }
  const int32_t n_vocab = engine_->model().config().n_vocab;
  absl::Status posted = receiver_->Post(
      xfer, *secret, std::move(layers), MonoClock::now() + *budget,
      [weak, engine, id, metrics, n_vocab](absl::Status s, std::string trailer,
                                           transport::ReceiveTiming timing) {
        std::shared_ptr<Call> c = weak.lock();
        // Token #1 (of each sample, n > 1), from a peer: checked before use.
        std::vector<TokenId> firsts;
        if (s.ok()) {
          absl::StatusOr<std::vector<TokenId>> parsed = node::ParseKvTrailer(trailer, n_vocab);
          if (parsed.ok()) {
            firsts = *std::move(parsed);
          } else {
            s = parsed.status();
          }
        }
        if (s.ok()) {
          if (c) {
            c->kv_first_ns = timing.first_layer_ns;
            c->kv_last_ns = timing.last_layer_ns;
          }
          engine->Activate(id, std::move(firsts));
          return;
        }
        // No more writes into the blocks now: free them and say why.
        if (metrics) metrics->error(tracing::ErrorKind::kKvTransfer).Increment();
        if (c) c->failed.store(true);
        engine->Abort(id);
        if (!c) return;
        v1::DecodeEvent ev;
        v1::Error* e = ev.mutable_error();
        e->set_code(static_cast<int>(s.code()));
        e->set_message(absl::StrCat("KV transfer failed: ", s.ToString()));
        e->set_kind("kv_transfer");
        c->out->Write(ev);
        c->out->Finish(grpc::Status(static_cast<grpc::StatusCode>(s.code()), e->message()));
      });
  if (!posted.ok()) {
    call->failed.store(true);
    engine_->Abort(id);
    call->out->Finish(rpc::ToGrpc(posted));
    return writer;
  }
  if (call->cancelled.load()) {
    // Cancelled while reserving: the blocks are posted now, so this Cancel
    // finds them (its callback aborts the request as well).
    receiver_->Cancel(xfer).IgnoreError();
    engine_->Abort(id);
    return writer;
  }
  v1::DecodeEvent admitted;
  admitted.mutable_admitted()->set_blocks(static_cast<int32_t>(blocks->size()));
  call->out->Write(admitted);
  return writer;
}

}  // namespace pdserve::decode
