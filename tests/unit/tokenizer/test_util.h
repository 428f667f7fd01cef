// Helpers shared by the tokenizer tests: loading vocab files, reading the
// llama.cpp test vectors, and building small vocabularies with GgufWriter.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/tokenizer/tokenizer.h"

namespace pdserve::testing {

std::string TestDataPath(const std::string& name);  // under tests/data/tokenizer/

// Loads a GGUF file's tokenizer; fails the test (and returns nullptr) on error.
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& path);

struct VocabVector {
  std::string text;
  std::vector<TokenId> ids;
};
// NAME.gguf.inp / NAME.gguf.out (see tests/data/tokenizer/README.md).
std::vector<VocabVector> ReadVectors(const std::string& gguf_path);

// A small vocabulary for tests. Tokens are given as written in the vocab
// (byte-level alphabet for BPE, U+2581 for SPM spaces).
struct SyntheticVocab {
  std::string model = "gpt2";
  std::string pre;  // empty: key left out
  std::vector<std::string> tokens;
  std::vector<int32_t> types;  // empty: key left out
  std::vector<float> scores;   // empty: key left out
  std::vector<std::string> merges;
  int bos = -1, eos = -1, eot = -1, unk = -1;             // -1: key left out
  int add_bos = -1, add_eos = -1, add_space_prefix = -1;  // -1: key left out

  // Adds a token and returns its id.
  int Add(const std::string& text, int32_t type = 1, float score = 0.0f);
  std::unique_ptr<gguf::GgufFile> ToGguf() const;
};

// The byte-level alphabet spelling of raw text ("a b" -> "aĠb").
std::string ByteLevel(const std::string& raw);

// Adds all 256 byte-level single-character tokens (so every text encodes).
void AddByteAlphabet(SyntheticVocab* v);

// Human-readable form of ids for failure messages.
std::string IdsToString(const std::vector<TokenId>& ids);

}  // namespace pdserve::testing
