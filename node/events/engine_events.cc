#include "node/events/engine_events.h"

#include "rpc/convert.h"

namespace pdserve::node {

using tracing::Stage;
using tracing::StageInterval;

bool WantsChunk(const SeqOutput& out) {
  return !out.tokens.empty() || !out.text.empty() ||
         (out.n_samples > 1 && out.finish != FinishReason::kNone &&
          out.finish != FinishReason::kError);
}

bool EndsRequest(const SeqOutput& out) {
  return out.finish == FinishReason::kError || out.request_done;
}

void FillUsage(const SeqOutput& out, v1::Usage* usage) {
  usage->set_prompt_tokens(out.prompt_tokens);
  usage->set_completion_tokens(out.completion_tokens);
  usage->set_cached_prompt_tokens(out.cached_tokens);
}

void FillChunk(const SeqOutput& out, v1::Chunk* chunk) {
  chunk->mutable_token_ids()->Assign(out.tokens.begin(), out.tokens.end());
  if (out.n_samples > 1) {
    chunk->set_index(out.sample_index);
    if (out.finish != FinishReason::kNone && out.finish != FinishReason::kError) {
      chunk->set_finish_reason(rpc::ToProto(out.finish));
    }
  }
  chunk->set_text(out.text);
  FillUsage(out, chunk->mutable_usage());
  for (float lp : out.logprobs) chunk->add_logprobs(lp);
  for (const auto& top : out.top_logprobs) {
    v1::TokenLogprobs* t = chunk->add_top_logprobs();
    for (const TokenLogprob& x : top) {
      v1::TopLogprob* e = t->add_top();
      e->set_token_id(x.token);
      e->set_logprob(x.logprob);
    }
  }
}

void AppendStages(const tracing::StageTimeline& timeline, int64_t shift_ns, const std::string& node,
                  google::protobuf::RepeatedPtrField<v1::StageTiming>* out) {
  for (const auto& [stage, iv] : timeline.Entries()) {
    v1::StageTiming* t = out->Add();
    t->set_stage(std::string(tracing::StageName(stage)));
    t->set_start_ns(iv.start_offset_ns + shift_ns);
    t->set_duration_ns(iv.duration_ns);
    t->set_node(node);
  }
}

tracing::StageTimeline StagesOf(const SeqTimes& t, int64_t origin, NodeRole role) {
  tracing::StageTimeline tl;
  auto rec = [&](Stage s, int64_t from, int64_t to) {
    if (from > 0 && to >= from) tl.Record(s, {from - origin, to - from});
  };
  switch (role) {
    case NodeRole::kPrefill:
      rec(Stage::kPrefillQueue, origin, t.scheduled_ns);
      rec(Stage::kPrefillCompute, t.scheduled_ns, t.first_token_ns);
      break;
    case NodeRole::kMixed:
      rec(Stage::kPrefillQueue, origin, t.scheduled_ns);
      rec(Stage::kPrefillCompute, t.scheduled_ns, t.first_token_ns);
      rec(Stage::kDecodeGenerate, t.first_token_ns, t.finished_ns);
      break;
    case NodeRole::kDecode: {
      rec(Stage::kDecodeWaitKv, origin, t.activated_ns);
      rec(Stage::kDecodeQueue, t.activated_ns, t.scheduled_ns);
      if (t.first_token_ns > 0) {
        const int64_t step_start = t.first_token_ns - t.first_step_ns;
        rec(Stage::kDecodeFirstStep, step_start, t.first_token_ns);
      }
      rec(Stage::kDecodeGenerate, t.first_token_ns, t.finished_ns);
      break;
    }
  }
  return tl;
}

}  // namespace pdserve::node
