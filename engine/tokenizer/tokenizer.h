// Tokenizer built from a GGUF file's `tokenizer.*` keys: byte-level BPE
// (`gpt2`, with the pre-tokenizer named by `tokenizer.ggml.pre`) and
// SentencePiece BPE (`llama`). Internals hidden behind a pimpl.
//
// Behaviour follows llama.cpp's vocab (token types, special ids, the
// end-of-generation set, SPM's leading space) with three documented choices:
//  - an unknown `tokenizer.ggml.pre` is an error listing the supported names;
//    an absent one means GPT-2's pre-tokenizer;
//  - special tokens are found leftmost-first, longest at a position (HF's
//    added-token matching; llama.cpp's longest-token-first pass differs only
//    when two special texts overlap in the input);
//  - when several texts could name the EOT token, the first of llama.cpp's
//    candidate list wins (llama.cpp picks in hash order);
//  - byte-level BPE drops bytes its alphabet lacks (as llama.cpp and HF do);
//    SPM spells an unknown character with <0xNN> tokens, else one unknown
//    token (llama.cpp aborts there).
// A Tokenizer is immutable after FromGguf: every method is const and safe to
// call from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"

namespace pdserve {

using TokenId = int32_t;

// A byte range [begin, end) of a text.
struct ByteRange {
  size_t begin = 0;
  size_t end = 0;
};

struct EncodeOptions {
  bool add_special = false;    // add BOS/EOS where the vocab asks for it
  bool parse_special = false;  // recognise special/control tokens written in the text
  // With parse_special: ranges of the text (sorted, disjoint, in bounds) where
  // no special/control token is recognised, not even one that starts before
  // the range and ends inside it: user content inside a chat template, whose
  // "<|im_end|>" is text while the template's own markers stay special. The
  // bytes around a boundary still form words together, so a text without
  // special tokens encodes the same with or without ranges.
  std::span<const ByteRange> literal_ranges;
};

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& file);
  ~Tokenizer();

  // Text must be valid UTF-8 (InvalidArgument otherwise).
  absl::StatusOr<std::vector<TokenId>> Encode(std::string_view text,
                                              const EncodeOptions& options = {}) const;

  // The raw bytes a token stands for. Control and unknown tokens give their
  // text only when `render_special`, else nothing; user-defined tokens always
  // give their text (they are content, as in llama.cpp). Out-of-range ids give
  // an empty string.
  std::string TokenToBytes(TokenId id, bool render_special = false) const;
  // Concatenated bytes; the caller decides what to do with invalid UTF-8.
  std::string Decode(const std::vector<TokenId>& ids, bool render_special = false) const;

  int32_t n_vocab() const;
  std::string_view model() const;  // "gpt2" or "llama"
  std::string_view pre() const;    // pre-tokenizer name
  TokenId bos_id() const;          // -1 when none
  TokenId eos_id() const;
  TokenId eot_id() const;
  TokenId eom_id() const;
  TokenId unk_id() const;
  bool add_bos() const;
  bool add_eos() const;
  // End-of-generation ids: EOS, EOT and other end markers the vocab names.
  const std::vector<TokenId>& eog_ids() const;
  bool IsEog(TokenId id) const;
  bool IsSpecial(TokenId id) const;  // control / user-defined / unknown tokens
  // Id of an exact token text (as stored in the vocab), -1 when absent.
  TokenId FindToken(std::string_view text) const;
  std::string_view TokenText(TokenId id) const;  // as stored in the vocab

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a token stream into text without ever emitting a broken UTF-8
// sequence: bytes of an incomplete character are held back until the token
// that completes it arrives.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer* tokenizer, bool render_special = false)
      : tokenizer_(tokenizer), render_special_(render_special) {}
  // Returns the text that became complete with this token (may be empty).
  std::string Push(TokenId id);
  // Returns what is left at end of stream; incomplete bytes become U+FFFD.
  std::string Flush();
  // Bytes held back now.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  // Takes the complete characters off `pending_`; bytes that can never form
  // a character become U+FFFD; a trailing partial character stays unless
  // `flush`.
  std::string TakeReady(bool flush);

  const Tokenizer* tokenizer_;
  bool render_special_;
  std::string pending_;
};

// Length of the longest prefix of `s` that is valid UTF-8 made of complete
// characters: what a stream can emit now (the rest is either a partial
// character awaiting more bytes or ill-formed).
size_t CompleteUtf8Prefix(std::string_view s);
bool IsValidUtf8(std::string_view s);

}  // namespace pdserve
