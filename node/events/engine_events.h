// Engine outputs (SeqOutput) as wire events, and a sequence's times as
// stage timings. Used by every node role.
#pragma once

#include <string>

#include "engine/sequence.h"
#include "pdserve/v1/generate.pb.h"
#include "tracing/stage_timeline.h"

namespace pdserve::node {

// The new tokens, text and logprobs of `out`, with cumulative usage; with
// n > 1 samples, its sample index and the sample's finish.
void FillChunk(const SeqOutput& out, v1::Chunk* chunk);
// Whether `out` is worth a chunk (tokens, text, or a sample's end).
bool WantsChunk(const SeqOutput& out);
// Whether `out` is the request's last word (then a complete or an error).
bool EndsRequest(const SeqOutput& out);
void FillUsage(const SeqOutput& out, v1::Usage* usage);

// Appends `timeline`'s stages, shifted by `shift_ns`, to `timings`.
void AppendStages(const tracing::StageTimeline& timeline, int64_t shift_ns, const std::string& node,
                  google::protobuf::RepeatedPtrField<v1::StageTiming>* out);

// A sequence's stages on this node, as offsets from `origin_ns` (when the
// node received the request):
//   prefill role: prefill.queue, prefill.compute
//   decode role:  decode.wait_kv (origin -> KV landed), decode.queue,
//                 decode.first_step, decode.generate
//   mixed role:   prefill.queue, prefill.compute, decode.generate
enum class NodeRole { kPrefill, kDecode, kMixed };
tracing::StageTimeline StagesOf(const SeqTimes& t, int64_t origin_ns, NodeRole role);

}  // namespace pdserve::node
