// llama.cpp's tokenizer test vectors: every string must tokenize exactly,
// and decoding must give the string back.
#include <string>

#include "gtest/gtest.h"
#include "tests/unit/tokenizer/test_util.h"

namespace pdserve {
namespace {

using testing::IdsToString;
using testing::LoadTokenizer;
using testing::ReadVectors;
using testing::TestDataPath;

class VocabVectorsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VocabVectorsTest, EveryStringTokenizesExactly) {
  const std::string path = TestDataPath(GetParam());
  auto tok = LoadTokenizer(path);
  ASSERT_NE(tok, nullptr);
  const auto vectors = ReadVectors(path);
  ASSERT_EQ(vectors.size(), 46u);
  int failures = 0;
  for (const auto& v : vectors) {
    auto ids = tok->Encode(v.text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, v.ids) << "text '" << v.text << "'\n  got      " << IdsToString(*ids)
                           << "\n  expected " << IdsToString(v.ids);
    failures += *ids != v.ids;
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(VocabVectorsTest, DecodeInvertsEncode) {
  const std::string path = TestDataPath(GetParam());
  auto tok = LoadTokenizer(path);
  ASSERT_NE(tok, nullptr);
  const bool spm = tok->model() == "llama";
  for (const auto& v : ReadVectors(path)) {
    auto ids = tok->Encode(v.text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    // SentencePiece encodes a leading space that the text did not have.
    const std::string expected = (spm && !v.text.empty()) ? " " + v.text : v.text;
    EXPECT_EQ(tok->Decode(*ids), expected);
    // The expected ids decode the same way (ours and llama.cpp's agree on bytes).
    EXPECT_EQ(tok->Decode(v.ids), expected);
  }
}

INSTANTIATE_TEST_SUITE_P(LlamaCppVocabs, VocabVectorsTest,
                         ::testing::Values("ggml-vocab-gpt-2.gguf", "ggml-vocab-starcoder.gguf",
                                           "ggml-vocab-llama-spm.gguf"),
                         [](const auto& info) {
                           std::string name = info.param.substr(11);  // after "ggml-vocab-"
                           name = name.substr(0, name.find('.'));
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace pdserve
