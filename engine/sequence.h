// Scheduler-owned state of one request on one node: its tokens, how many of
// them have KV in the cache, its block table, sampler and text stream.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/grammar/grammar.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "engine/text/request.h"
#include "engine/text/text_stream.h"

namespace pdserve {

// What a node does with a request.
enum class SeqMode {
  kFull,            // prefill then decode (colocated node, generate)
  kPrefillOnly,     // prefill, sample token #1, hold the blocks for shipping
  kDecodeImported,  // KV arrives from a prefill node, then decode
};

enum class SeqState {
  kWaiting,     // queued for (re)computation
  kRunning,     // in the batch loop: prefill chunks or decode steps
  kAwaitingKv,  // imported: blocks reserved, KV not landed yet
  kHeld,        // prefill-only: done, blocks held until Release
  kFinished,
};

// Receives a prefill-only sequence's KV layer by layer as the forward pass
// stores it (called on the engine thread during the final prefill step).
class KvSink {
 public:
  virtual ~KvSink() = default;
  virtual void OnLayerStored(int32_t layer, const std::vector<BlockId>& blocks) = 0;
  // GPU engines (see LayerObserver::TakesDeviceEvents): the layer is final
  // once stored_event (a cudaEvent_t) completes; the host did not wait.
  virtual bool TakesDeviceEvents() const { return false; }
  virtual void OnLayerStoredOnDevice(int32_t layer, const std::vector<BlockId>& blocks,
                                     void* /*stored_event*/) {
    OnLayerStored(layer, blocks);
  }
};

// Monotonic timestamps (common/clock.h) of a request's life on this node.
struct SeqTimes {
  int64_t arrival_ns = 0;      // Submit / Reserve
  int64_t activated_ns = 0;    // imported: KV landed (Activate)
  int64_t scheduled_ns = 0;    // first step that computed it
  int64_t first_token_ns = 0;  // end of the step that produced its first token here
  int64_t first_step_ns = 0;   // duration of that step
  int64_t finished_ns = 0;
};

// Token #1 of one sample, as a prefill-only request with n > 1 reports it.
struct SampleFirstToken {
  TokenId token = 0;
  std::string text;
  float logprob = 0;
  std::vector<TokenLogprob> top;
  FinishReason finish = FinishReason::kNone;
};

// One update for a request, delivered on the engine thread. With n > 1
// samples each output belongs to one sample (sample_index); every sample
// ends with its own finish, and the request is over with request_done.
struct SeqOutput {
  std::string request_id;
  std::vector<TokenId> tokens;  // new tokens (usually one)
  std::string text;             // new text (stop strings withheld)
  std::vector<float> logprobs;  // per new token, when asked for
  std::vector<std::vector<TokenLogprob>> top_logprobs;
  FinishReason finish = FinishReason::kNone;
  absl::Status error;         // set with finish == kError
  bool prefill_done = false;  // prefill-only: token #1 is here, blocks held
  // Prefill-only with n > 1: token #1 of every sample (index 0 is also in
  // tokens/text/logprobs above); finish above is set only when all ended.
  std::vector<SampleFirstToken> samples;
  int32_t sample_index = 0;
  int32_t n_samples = 1;
  // The last sample's finish: completion_tokens then sums all samples.
  bool request_done = false;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;  // prompt tokens served from the prefix cache
  SeqTimes times;
};
using OutputCallback = std::function<void(const SeqOutput&)>;

struct Sequence;

// The samples of one request (n >= 1). Sample 0 is the sequence the request
// arrived as; it owns the group, and the group owns the other samples, forked
// from it once the prompt's KV is there (they share its full blocks).
struct SampleGroup {
  int32_t n_samples = 1;
  bool forked = false;
  int32_t n_unfinished = 1;                      // members not finished (the root goes last)
  int32_t n_unreported = 1;                      // members whose finish the client has not had
  int64_t completion_tokens = 0;                 // over the members that reported their finish
  std::vector<std::unique_ptr<Sequence>> forks;  // samples 1..n-1
};

struct Sequence {
  std::shared_ptr<const RequestSpec> spec;
  int32_t sample_index = 0;
  SampleGroup* group = nullptr;  // owned by sample 0's own_group
  std::unique_ptr<SampleGroup> own_group;
  bool reported = false;  // its finish went out
  SeqMode mode = SeqMode::kFull;
  SeqState state = SeqState::kWaiting;
  uint64_t order = 0;           // arrival order, for FIFO and preemption
  std::vector<TokenId> tokens;  // prompt followed by generated tokens
  int32_t n_prompt = 0;
  int32_t n_computed = 0;   // tokens[0, n_computed) have KV in the cache
  int32_t n_generated = 0;  // counts token #1 even when a prefill node made it
  int32_t n_cached = 0;     // prompt tokens reused from the prefix cache
  bool prefix_checked = false;
  std::vector<BlockId> blocks;
  std::unique_ptr<Sampler> sampler;
  // Structured outputs: the grammar state and its scratch mask (null and
  // empty for free text).
  std::unique_ptr<grammar::TokenMatcher> matcher;
  std::vector<uint32_t> token_mask;  // (BitmaskWords(n_vocab),)
  std::unique_ptr<TextStream> text;
  OutputCallback on_output;
  KvSink* kv_sink = nullptr;  // prefill-only
  SeqTimes times;

  int32_t n_tokens() const { return static_cast<int32_t>(tokens.size()); }
  // Tokens still to compute before the next sample.
  int32_t n_pending() const { return n_tokens() - n_computed; }
  const std::string& id() const { return spec->id; }
};

}  // namespace pdserve
