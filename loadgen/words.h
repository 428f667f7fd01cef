// Random English text whose token count is predictable without the
// target's tokenizer: common lowercase words that byte-level BPE vocabularies
// (GPT-2, Llama 3, SmolLM, Qwen, ...) keep as one token each, with the
// leading space. A text of N such words is N tokens (plus BOS where the
// server adds one); tests check the claim against the bundled model.
#pragma once

#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace pdserve::loadgen {

const std::vector<std::string_view>& CommonWords();

// `n_words` random common words joined by single spaces.
std::string RandomWords(int n_words, std::mt19937_64& rng);

}  // namespace pdserve::loadgen
