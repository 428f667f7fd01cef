// Token sampling for one sequence: penalties, temperature, top-k, top-p,
// min-p, a per-request seeded generator, and log-probabilities.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/text/request.h"

namespace pdserve {

// xoshiro256** seeded through splitmix64: portable and reproducible, so a
// seeded request samples the same tokens on every node and machine.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t Next();
  double Uniform();  // [0, 1)

 private:
  uint64_t s_[4];
};

struct TokenLogprob {
  TokenId token = 0;
  float logprob = 0;
};

struct SampleResult {
  TokenId token = 0;
  float logprob = 0;              // log-softmax of the raw logits
  std::vector<TokenLogprob> top;  // top_logprobs alternatives, best first
};

class Sampler {
 public:
  // `seed` is used when params.seed is unset (callers pass a random one).
  Sampler(const SamplingParams& params, uint64_t seed);

  // Records tokens the penalties look at: the prompt (repetition penalty)
  // and each generated token (all three penalties).
  void AddPromptTokens(const std::vector<TokenId>& tokens);
  void AddGenerated(TokenId token);
  // Moves the generator past `n_samples` samples taken elsewhere (token #1
  // on a prefill node, tokens before a migration): a seeded request then
  // draws what it would have drawn on one node. Each Sample with
  // temperature > 0 takes exactly one draw; greedy takes none.
  void SkipSamples(int64_t n_samples);

  // Samples from logits (n_vocab); logits are used as scratch. `allowed`
  // (BitmaskWords(n_vocab) words; bit t set: token t may be chosen) masks
  // the choice for structured outputs; log-probabilities still describe the
  // model's unmasked distribution. The caller ensures it allows a token.
  SampleResult Sample(float* logits, int32_t n_vocab, const uint32_t* allowed = nullptr);

 private:
  void ApplyPenalties(float* logits, int32_t n_vocab) const;

  SamplingParams params_;
  Rng rng_;
  absl::flat_hash_set<TokenId> seen_;                  // prompt + generated
  absl::flat_hash_map<TokenId, int32_t> generated_;    // counts
  std::vector<std::pair<float, TokenId>> candidates_;  // scratch
};

// Index of the largest logit (lowest id on ties).
TokenId Argmax(const float* logits, int32_t n_vocab);

// Sets the logit of every token the bitmask does not allow to -inf.
void ApplyTokenMask(float* logits, int32_t n_vocab, const uint32_t* allowed);
// Reference for ApplyTokenMask: one bit test per token.
void ApplyTokenMaskNaive(float* logits, int32_t n_vocab, const uint32_t* allowed);

}  // namespace pdserve
