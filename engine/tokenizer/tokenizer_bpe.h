// The merge algorithms: byte-level BPE with merge ranks (`gpt2`) and
// SentencePiece BPE with piece scores (`llama`). Both merge with a priority
// queue over adjacent symbol pairs, so a word of n bytes costs O(n log n)
// whatever its content. Internal to pdserve_tokenizer.
#pragma once

#include <array>
#include <climits>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/tokenizer/tokenizer_vocab.h"

namespace pdserve::tokenizer_internal {

// Reused buffers; one per Encode call, never shared between threads.
struct MergeScratch {
  struct Symbol {
    int32_t id;    // token (or BPE intermediate) id; kDead once merged away
    int32_t prev;  // neighbours in the current segmentation, -1 at the ends
    int32_t next;
    uint32_t begin;  // byte range in the word
    uint32_t end;
  };
  static constexpr int32_t kDead = INT32_MIN;
  // A possible merge of adjacent symbols `left` and `right`. Stale once either
  // side changed: the keys record the sides as they were when pushed (BPE:
  // their ids; SPM: their end offsets).
  struct Candidate {
    int32_t rank;  // BPE: lower merges first
    float score;   // SPM: higher merges first
    int32_t left;
    int32_t right;
    int32_t left_key;
    int32_t right_key;
    int32_t merged_id;
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::string text;  // the word in the byte-level alphabet (ignore_merges lookups)
};

class BpeMerger {
 public:
  // `merges` are "left right" strings in rank order (tokenizer.ggml.merges);
  // malformed entries are skipped with a warning.
  static BpeMerger Create(const Vocab& vocab, const std::vector<std::string_view>& merges);

  // Appends the tokens of one pre-tokenized word (raw UTF-8 bytes).
  void EncodeWord(std::string_view word, MergeScratch* scratch, std::vector<TokenId>* out) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  void PushCandidate(MergeScratch* s, int32_t left, int32_t right) const;
  void EmitBytes(std::string_view bytes, std::vector<TokenId>* out) const;

  const Vocab* vocab_ = nullptr;
  // Merges keyed by the ids of both halves. A merge result missing from the
  // vocabulary gets an id past the vocabulary so later merges can use it;
  // a word left holding such a symbol falls back to byte tokens.
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_symbol_{};  // id of each byte's alphabet character
  std::array<std::string, 256> byte_text_;  // each byte's alphabet character, UTF-8
  bool ignore_merges_ = false;
};

class SpmMerger {
 public:
  explicit SpmMerger(const Vocab& vocab);
  // Appends the tokens of `text`, whose spaces are already U+2581.
  void Encode(std::string_view text, MergeScratch* scratch, std::vector<TokenId>* out) const;

 private:
  // Merges text[begin, end) on its own.
  void EncodeSegment(std::string_view text, size_t begin, size_t end, MergeScratch* s,
                     std::vector<TokenId>* out) const;
  void PushCandidate(std::string_view text, MergeScratch* s, int32_t left, int32_t right) const;
  void EmitBytes(std::string_view bytes, std::vector<TokenId>* out) const;

  const Vocab* vocab_;
  std::array<TokenId, 256> byte_token_{};  // <0xNN> tokens, or -1
  size_t max_token_bytes_ = 0;
  // Characters that some token has right before a U+2581. Every merge makes
  // a token, so no merge crosses a U+2581 that follows any other character:
  // the text is merged word by word there, with the same result as merging
  // it whole and a much smaller queue.
  absl::flat_hash_set<std::string> joins_space_;
};

}  // namespace pdserve::tokenizer_internal
