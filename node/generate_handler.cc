#include "node/generate_handler.h"

#include "common/clock.h"
#include "node/events/engine_events.h"
#include "rpc/convert.h"
#include "rpc/stream_writer.h"

namespace pdserve::node {

using Writer = rpc::StreamWriter<v1::DecodeEvent>;

GenerateHandler::GenerateHandler(Engine* engine, std::string node_name,
                                 const tracing::PdserveMetrics* metrics, size_t max_stream_events)
    : engine_(engine),
      node_name_(std::move(node_name)),
      metrics_(metrics),
      max_stream_events_(max_stream_events) {}

grpc::ServerWriteReactor<v1::DecodeEvent>* GenerateHandler::Generate(
    grpc::CallbackServerContext* ctx, const v1::NodeRequest* request) {
  const int64_t origin = MonoNowNs();
  RequestSpec spec = rpc::FromProto(*request);
  const std::string id = spec.id;
  Engine* engine = engine_;
  auto* writer = new Writer(max_stream_events_, [engine, id] { engine->Abort(id); });
  std::shared_ptr<Writer::Handle> out = writer->handle();
  const std::string node = node_name_;
  const tracing::PdserveMetrics* metrics = metrics_;
  absl::Status s =
      engine_->Submit(std::move(spec), [out, origin, node, metrics](const SeqOutput& o) {
        if (WantsChunk(o)) {
          v1::DecodeEvent ev;
          FillChunk(o, ev.mutable_chunk());
          out->Write(std::move(ev));
          if (metrics)
            metrics->generation_tokens_total->Increment(static_cast<double>(o.tokens.size()));
        }
        if (!EndsRequest(o)) return;
        v1::DecodeEvent done;
        v1::Complete* c = done.mutable_complete();
        c->set_finish_reason(rpc::ToProto(o.finish));
        FillUsage(o, c->mutable_usage());
        const tracing::StageTimeline stages = StagesOf(o.times, origin, NodeRole::kMixed);
        AppendStages(stages, 0, node, c->mutable_timings()->mutable_stages());
        if (metrics) metrics->ObserveStages(stages);
        c->set_prefill_node(node);
        c->set_decode_node(node);
        out->Write(std::move(done));
        out->Finish(o.finish == FinishReason::kError ? rpc::ToGrpc(o.error) : grpc::Status::OK);
      });
  if (!s.ok()) out->Finish(rpc::ToGrpc(s));
  return writer;
}

}  // namespace pdserve::node
