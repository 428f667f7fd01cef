// The prompts of a run: random, ShareGPT-format datasets, shared prefixes.
//
// Input length control:
//  - token-id targets (pdserve gRPC): prompts are random token ids, so the
//    input is exactly the planned number of tokens (no BOS is added to
//    token-id prompts);
//  - text targets (HTTP): prompts are random common words, one token each
//    under byte-level BPE vocabularies (see words.h), so the input is the
//    planned length plus any BOS the server adds. The run reports the usage
//    counts beside the planned ones so the claim is checked every time.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadgen/client.h"

namespace pdserve::loadgen {

// Counts the tokens of a text (a local tokenizer), for datasets of text.
using TokenCounter = std::function<int32_t(const std::string& text)>;

struct WorkloadOptions {
  std::string name = "random";  // random, sharegpt or prefix
  std::string dataset_path;     // sharegpt
  int num_prompts = 100;
  int random_input_len = 256;  // random: the prompt; prefix: the suffix after the prefix
  int random_output_len = 64;
  double random_range_ratio = 0.0;  // lengths uniform in [L*(1-r), L*(1+r)]
  int prefix_len = 0;               // prefix: tokens of each shared prefix
  int num_prefixes = 1;             // prefix: how many distinct prefixes
  int sharegpt_output_len = 0;      // sharegpt: fixed output length (0: from the reply)
  bool ignore_eos = false;
  float temperature = 0.0f;
  uint64_t seed = 0;
  // Token-id prompts (else text); needs vocab_size.
  bool token_ids = false;
  int32_t vocab_size = 0;
  std::vector<int32_t> avoid_token_ids;  // EOS/BOS: never in a random prompt
};

absl::Status ValidateWorkloadOptions(const WorkloadOptions& options);

// `count_tokens` sizes ShareGPT texts; without one, 4 bytes count as a token
// (the usual English estimate) and the run's usage figures say the truth.
// ShareGPT follows vLLM: shuffled with the seed; conversations[0] is the
// prompt and conversations[1]'s length the output length; pairs with under 4
// tokens on either side, a prompt over 1024 or a total over 2048 are skipped.
absl::StatusOr<std::vector<RequestInput>> BuildWorkload(const WorkloadOptions& options,
                                                        const TokenCounter& count_tokens);

// Uniform integer in [L*(1-r), L*(1+r)], at least 1.
int SampleLength(int length, double range_ratio, std::mt19937_64& rng);

}  // namespace pdserve::loadgen
