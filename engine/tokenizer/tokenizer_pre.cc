#include "engine/tokenizer/tokenizer_pre.h"

#include "engine/tokenizer/unicode_regex.h"

namespace pdserve {
namespace {

// llama.cpp spells GPT-2's pattern without the final `|\s+` in its falcon and
// default lists; text no alternative matches becomes a piece anyway, so both
// spellings split alike and kGpt2Regex serves for all.
constexpr std::string_view kFalconPunct = R"([\p{P}\$\+<=>\^~\|`]+)";
constexpr std::string_view kThreeAsciiDigits = R"([0-9][0-9][0-9])";

const std::vector<PreTokenizerPreset>& Presets() {
  static const auto* presets = new std::vector<PreTokenizerPreset>{
      {.canonical_name = "gpt2",
       .names = {"gpt2", "gpt-2", "mpt", "olmo", "phi-2", "jais", "jina-es", "jina-de",
                 "jina-v2-es", "jina-v2-de", "gigachat", "a.x-4.0", "mellum", "modern-bert",
                 "trillion", "granite-docling"},
       .regexes = {kGpt2Regex}},
      // Digits one by one, then GPT-2's pattern on each remaining piece.
      {.canonical_name = "starcoder",
       .names = {"starcoder", "smollm", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
       .regexes = {kSingleDigitRegex, kGpt2Regex}},
      {.canonical_name = "llama-bpe",
       .names = {"llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                 "lfm2"},
       .regexes = {kLlama3Regex},
       .ignore_merges = true,
       .default_add_bos = true},
      // Llama 3's pattern without ignore_merges.
      {.canonical_name = "dbrx", .names = {"dbrx", "smaug-bpe"}, .regexes = {kLlama3Regex}},
      {.canonical_name = "qwen2",
       .names = {"qwen2", "deepseek-r1-qwen", "stablelm2"},
       .regexes = {kQwen2Regex}},
      {.canonical_name = "deepseek-coder",
       .names = {"deepseek-coder"},
       .regexes = {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", "[一-龥ࠀ-一가-퟿]+",
                   R"(\p{N})"}},
      {.canonical_name = "falcon",
       .names = {"falcon"},
       .regexes = {kFalconPunct, kGpt2Regex, kThreeAsciiDigits}},
      // llama.cpp's fallback for an explicit "default".
      {.canonical_name = "default",
       .names = {"default"},
       .regexes = {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Regex, R"(\p{N}+)", kThreeAsciiDigits}},
  };
  return *presets;
}

}  // namespace

const PreTokenizerPreset* FindPreTokenizerPreset(std::string_view name) {
  for (const PreTokenizerPreset& preset : Presets()) {
    for (std::string_view n : preset.names) {
      if (n == name) return &preset;
    }
  }
  return nullptr;
}

std::string SupportedPreTokenizerNames() {
  std::string out;
  for (const PreTokenizerPreset& preset : Presets()) {
    for (std::string_view name : preset.names) {
      if (!out.empty()) out += ", ";
      out += name;
    }
  }
  return out;
}

}  // namespace pdserve
