// The vocabulary half of the tokenizer: token texts, types and scores, the
// special ids and the end-of-generation set, read from a GGUF file's
// `tokenizer.*` keys. Internal to pdserve_tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_pre.h"

namespace pdserve::tokenizer_internal {

// Token attributes as bits: a token detected as an end marker by its text
// gains kControl on top of its file type, as llama.cpp does.
enum TokenAttr : uint8_t {
  kAttrNormal = 1 << 0,
  kAttrUnknown = 1 << 1,
  kAttrControl = 1 << 2,
  kAttrUserDefined = 1 << 3,
  kAttrUnused = 1 << 4,
  kAttrByte = 1 << 5,
};
// Tokens matched in the text before the model's algorithm runs.
inline constexpr uint8_t kAttrSpecial = kAttrControl | kAttrUserDefined | kAttrUnknown;

enum class VocabType {
  kBpe,  // `gpt2`: byte-level BPE with merge ranks
  kSpm,  // `llama`: SentencePiece BPE with piece scores
};

struct Vocab {
  VocabType type = VocabType::kBpe;
  std::string model;                           // tokenizer.ggml.model
  std::string pre;                             // tokenizer.ggml.pre (BPE only)
  const PreTokenizerPreset* preset = nullptr;  // BPE only

  std::vector<std::string> texts;                 // as stored in the file
  std::vector<uint8_t> attrs;                     // TokenAttr bits
  std::vector<float> scores;                      // SPM piece scores (0 when absent)
  absl::flat_hash_map<std::string, TokenId> ids;  // text -> id (empty texts left out)

  TokenId bos = -1;
  TokenId eos = -1;
  TokenId eot = -1;
  TokenId eom = -1;
  TokenId unk = -1;
  TokenId pad = -1;
  TokenId fim_pre = -1;
  TokenId fim_suf = -1;
  TokenId fim_mid = -1;
  TokenId fim_pad = -1;
  TokenId fim_rep = -1;
  TokenId fim_sep = -1;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;  // SPM: a space before the text (and after each special token)
  std::vector<TokenId> eog;       // sorted, unique

  int32_t size() const { return static_cast<int32_t>(texts.size()); }
  bool InRange(TokenId id) const { return id >= 0 && id < size(); }
  TokenId Find(std::string_view text) const {
    // This Abseil's string_view is its own type, not std::string_view.
    auto it = ids.find(absl::string_view(text.data(), text.size()));
    return it == ids.end() ? -1 : it->second;
  }
};

// Reads the vocabulary; errors name the key that is missing or malformed.
absl::StatusOr<std::unique_ptr<Vocab>> LoadVocab(const gguf::GgufFile& file);

}  // namespace pdserve::tokenizer_internal
