// The byte-level BPE pre-tokenizers, by their `tokenizer.ggml.pre` names.
// Patterns follow the HF tokenizer configs of each model family (and the
// split llama.cpp uses for the same name).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace pdserve {

struct PreTokenizerPreset {
  std::string_view canonical_name;
  std::vector<std::string_view> names;    // every `tokenizer.ggml.pre` value that selects it
  std::vector<std::string_view> regexes;  // applied in order, each splitting the last one's pieces
  // A pre-tokenized word that is itself a vocab token is emitted as is,
  // without merging (HF `ignore_merges`, Llama 3).
  bool ignore_merges = false;
  // Whether BOS is added when `tokenizer.ggml.add_bos_token` is absent.
  bool default_add_bos = false;
};

// The pre-tokenizer used when `tokenizer.ggml.pre` is absent: GPT-2's.
inline constexpr std::string_view kDefaultPreTokenizer = "gpt2";

// nullptr when the name is not supported.
const PreTokenizerPreset* FindPreTokenizerPreset(std::string_view name);
// "gpt2, gpt-2, ..." for error messages.
std::string SupportedPreTokenizerNames();

}  // namespace pdserve
