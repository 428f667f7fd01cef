// What a client asks for: the immutable request spec, shared by every node
// a request passes through (the scheduler's state lives in Sequence).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/grammar/grammar.h"
#include "engine/tokenizer/tokenizer.h"

namespace pdserve {

// Bounds ValidateRequest holds sampling values to. Temperature is 0
// (greedy) or in [kMinSamplingTemperature, kMaxSamplingTemperature]: below,
// 1/T overflows a float (the sampler treats it as greedy, but a client asking
// for it is told); above, every token is equally likely anyway.
inline constexpr float kMinSamplingTemperature = 1e-3f;
inline constexpr float kMaxSamplingTemperature = 100.0f;
inline constexpr int32_t kMaxTopK = 1 << 20;  // larger than any vocabulary
// Dividing a logit by a penalty near 0 overflows; past 100 it is already total.
inline constexpr float kMinRepetitionPenalty = 0.01f;
inline constexpr float kMaxRepetitionPenalty = 100.0f;
// Every generated token is looked up among the stop ids.
inline constexpr int32_t kMaxStopTokenIds = 256;
// Samples of one prompt (OpenAI's n / best_of): they share its KV.
inline constexpr int32_t kMaxSamples = 16;

// The seed of sample `index` of a seeded request: sample 0 uses the seed
// itself (n = 1 samples what it always did), the others a mix of both, so
// every sample is reproducible and they differ.
uint64_t SampleSeed(uint64_t seed, int32_t index);

struct SamplingParams {
  float temperature = 1.0f;              // 0 = greedy
  float top_p = 1.0f;                    // (0, 1]
  int32_t top_k = 0;                     // 0 = off
  float min_p = 0.0f;                    // [0, 1]
  float repetition_penalty = 1.0f;       // [0.01, 100]; 1 = off (prompt + generated tokens)
  float presence_penalty = 0.0f;         // [-2, 2] (generated tokens)
  float frequency_penalty = 0.0f;        // [-2, 2] (generated tokens)
  std::optional<uint64_t> seed;          // reproducible sampling when set
  int32_t top_logprobs = 0;              // alternatives per position, 0..20
  bool logprobs = false;                 // report the chosen token's logprob
  grammar::GrammarSpec response_format;  // structured outputs; kNone: free text
  // Samples drawn from the prompt (1..kMaxSamples), each with its own
  // generator (SampleSeed), penalties and grammar state.
  int32_t n = 1;
};

struct StopParams {
  int32_t max_tokens = 16;                // >= 1
  std::vector<std::string> stop_strings;  // not emitted themselves
  std::vector<TokenId> stop_token_ids;
  bool ignore_eos = false;
};

struct RequestSpec {
  std::string id;
  std::vector<TokenId> prompt;  // already tokenized (BOS included if wanted)
  SamplingParams sampling;
  StopParams stop;
  // A request continued on another node after its node failed mid-stream:
  // the last n_resumed prompt tokens are tokens generated before (the client
  // has them). They count as generated for the penalties, the seeded
  // generator's position and the text stream (stop strings, UTF-8), so the
  // continuation is the one the first node would have produced; max_tokens
  // and completion counts here cover only the tokens generated from now on.
  int32_t n_resumed = 0;
};

// KV blocks of `block_size` tokens that a request may grow to: its prompt
// plus max_tokens, for each of its n samples. The samples share the prompt's
// full blocks (KvCache::Fork); each owns a copy of the partial one and the
// blocks of its output. The router reserves this, a node admits against it.
inline int64_t KvBlocksNeeded(int64_t prompt_tokens, int64_t max_tokens, int64_t n,
                              int64_t block_size) {
  if (n < 1) n = 1;
  return prompt_tokens / block_size +
         n * ((prompt_tokens % block_size + max_tokens + block_size - 1) / block_size);
}

// Limits a request is checked against.
struct RequestLimits {
  int32_t n_ctx = 0;  // context length served
  int32_t n_vocab = 0;
  int32_t max_stop_strings = 16;
  int32_t max_stop_string_bytes = 256;
  int32_t max_top_logprobs = 20;
};

// InvalidArgument with a message a client can act on: prompt empty or over
// the context, max_tokens < 1 or past the context, NaN or out-of-range
// sampling values, token ids outside the vocabulary.
absl::Status ValidateRequest(const RequestSpec& spec, const RequestLimits& limits);

enum class FinishReason { kNone, kStop, kLength, kAbort, kError };
const char* FinishReasonName(FinishReason r);

}  // namespace pdserve
