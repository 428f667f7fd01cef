// Byte-level BPE on small vocabularies built for each case, where the
// expected tokens follow from the merges by hand.
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/tokenizer/test_util.h"

namespace pdserve {
namespace {

using testing::AddByteAlphabet;
using testing::ByteLevel;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::SyntheticVocab;

std::unique_ptr<Tokenizer> Build(const SyntheticVocab& v) {
  auto file = v.ToGguf();
  if (file == nullptr) return nullptr;
  auto tok = Tokenizer::FromGguf(*file);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

std::vector<TokenId> Enc(const Tokenizer& tok, std::string_view text, EncodeOptions opt = {}) {
  auto ids = tok.Encode(text, opt);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<TokenId>{};
}

// Ids of byte-level single characters in a vocab made by AddByteAlphabet.
TokenId B(char c) { return static_cast<unsigned char>(c); }

TEST(BpeTest, LowerRankMergesFirst) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int ab = v.Add("ab"), bc = v.Add("bc"), abc = v.Add("abc");
  v.merges = {"a b", "b c", "ab c", "a bc"};
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "abc"), ElementsAre(abc));  // a+b first, then ab+c
  EXPECT_THAT(Enc(*tok, "ab"), ElementsAre(ab));
  EXPECT_THAT(Enc(*tok, "bc"), ElementsAre(bc));
  EXPECT_THAT(Enc(*tok, "abcab"), ElementsAre(abc, ab));

  // Same vocabulary, "b c" ranked first: a + bc.
  v.merges = {"b c", "a b", "a bc"};
  tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "abc"), ElementsAre(abc));
  v.merges = {"b c", "a b"};  // no "a bc": stays split
  tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "abc"), ElementsAre(B('a'), bc));
}

TEST(BpeTest, EqualRanksMergeLeftmostFirst) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int aa = v.Add("aa");
  v.merges = {"a a"};
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "aaa"), ElementsAre(aa, B('a')));
  EXPECT_THAT(Enc(*tok, "aaaaa"), ElementsAre(aa, aa, B('a')));
}

TEST(BpeTest, IntermediateMissingFromVocabStillMerges) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int xyz = v.Add("xyz");  // "xy" itself is not a token
  v.merges = {"x y", "xy z"};
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "xyz"), ElementsAre(xyz));
  // A word that stops at "xy" falls back to its bytes.
  EXPECT_THAT(Enc(*tok, "xy"), ElementsAre(B('x'), B('y')));
}

TEST(BpeTest, WordsDoNotMergeAcrossPreTokenizerPieces) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int hello = v.Add("hello"), g_world = v.Add(ByteLevel(" world"));
  const int gg = v.Add(ByteLevel("  ")), g_b = v.Add(ByteLevel(" b"));
  const std::string g = ByteLevel(" ");  // "Ġ"
  v.merges = {"h e", "l l",  "he ll", "hell o",     g + " " + g, g + " w",
              "o r", "or l", "orl d", g + "w orld", g + " b",    "o w"};
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hello world"), ElementsAre(hello, g_world));
  // "hello" + "world" would merge "o w" if it crossed the space boundary.
  EXPECT_THAT(Enc(*tok, "a   b"), ElementsAre(B('a'), gg, g_b));  // \s+(?!\S)
  EXPECT_EQ(tok->Decode(Enc(*tok, "a   b")), "a   b");
  EXPECT_EQ(tok->pre(), "gpt2");  // default when tokenizer.ggml.pre is absent
}

// The same merges under different pre-tokenizers: digits stay whole (gpt2),
// go in threes (llama-bpe) or one by one (qwen2, smollm).
TEST(BpeTest, DigitGroupingPerPreTokenizer) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int t12 = v.Add("12"), t123 = v.Add("123"), t1234 = v.Add("1234");
  v.merges = {"1 2", "12 3", "123 4"};
  const std::vector<std::pair<std::string, std::vector<TokenId>>> cases = {
      {"gpt2", {t1234}},
      {"llama-bpe", {t123, B('4')}},
      {"qwen2", {B('1'), B('2'), B('3'), B('4')}},
      {"smollm", {B('1'), B('2'), B('3'), B('4')}},
      {"starcoder", {B('1'), B('2'), B('3'), B('4')}},
      {"refact", {B('1'), B('2'), B('3'), B('4')}},
      {"mpt", {t1234}},
  };
  for (const auto& [pre, expected] : cases) {
    v.pre = pre;
    auto tok = Build(v);
    ASSERT_NE(tok, nullptr) << pre;
    EXPECT_EQ(Enc(*tok, "1234"), expected) << pre;
    EXPECT_EQ(tok->pre(), pre);
  }
  v.pre = "llama-bpe";
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "12"), ElementsAre(t12));
  // "123" "412" "3"; "412" has only the "1 2" merge.
  EXPECT_THAT(Enc(*tok, "1234123"), ElementsAre(t123, B('4'), t12, B('3')));
}

TEST(BpeTest, Llama3ContractionsIgnoreCase) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int ap_s = v.Add("'S"), ap_ll = v.Add("'LL");
  v.merges = {"' S", "' L", "'L L"};
  v.pre = "llama-bpe";
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "IT'S"), ElementsAre(B('I'), B('T'), ap_s));
  EXPECT_THAT(Enc(*tok, "WE'LL"), ElementsAre(B('W'), B('E'), ap_ll));
  // GPT-2's contractions are lower-case only: "'" and "S" stay apart.
  v.pre = "gpt2";
  tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "IT'S"), ElementsAre(B('I'), B('T'), B('\''), B('S')));
}

TEST(BpeTest, Llama3IgnoreMergesTakesWholeWordTokens) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int word = v.Add("hello");  // no merge leads to it
  v.bos = v.Add("<|begin_of_text|>", 3);
  v.pre = "llama-bpe";
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hello"), ElementsAre(word));
  EXPECT_TRUE(tok->add_bos());  // llama-bpe adds BOS unless the file says otherwise
  v.pre = "dbrx";               // same pattern, merges only
  tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hello"), ElementsAre(B('h'), B('e'), B('l'), B('l'), B('o')));
}

TEST(BpeTest, UnknownPreTokenizerIsAnErrorNamingTheSupportedOnes) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  v.pre = "my-new-model";
  auto file = v.ToGguf();
  ASSERT_NE(file, nullptr);
  auto tok = Tokenizer::FromGguf(*file);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tok.status().message(), HasSubstr("my-new-model"));
  EXPECT_THAT(tok.status().message(), HasSubstr("llama-bpe"));
  EXPECT_THAT(tok.status().message(), HasSubstr("qwen2"));
}

TEST(BpeTest, MalformedVocabulariesAreErrors) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  v.model = "wordpiece";
  auto file = v.ToGguf();
  ASSERT_NE(file, nullptr);
  EXPECT_FALSE(Tokenizer::FromGguf(*file).ok());

  SyntheticVocab dup;
  AddByteAlphabet(&dup);
  dup.Add("a");  // repeats token 97
  file = dup.ToGguf();
  ASSERT_NE(file, nullptr);
  auto tok = Tokenizer::FromGguf(*file);
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(tok.status().message(), HasSubstr("repeats"));

  gguf::GgufWriter w;
  w.SetString("tokenizer.ggml.model", "gpt2");
  w.SetStringArray("tokenizer.ggml.tokens", {"a", "b"});  // no merges
  auto bare = gguf::GgufFile::FromBytes(w.Serialize());
  ASSERT_TRUE(bare.ok());
  EXPECT_FALSE(Tokenizer::FromGguf(**bare).ok());

  gguf::GgufWriter no_model;
  no_model.SetString("general.architecture", "x");
  auto none = gguf::GgufFile::FromBytes(no_model.Serialize());
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(Tokenizer::FromGguf(**none).ok());
}

TEST(BpeTest, InvalidUtf8IsRejected) {
  auto tok = testing::LoadTokenizer(testing::TestDataPath("ggml-vocab-gpt-2.gguf"));
  ASSERT_NE(tok, nullptr);
  const std::vector<std::string> bad_texts = {
      "\x80", "ab\xC0\x80", "\xED\xA0\x80", "x\xF5", "tail\xE2\x82", std::string("nul\0ok\xFF", 7)};
  for (const std::string& bad : bad_texts) {
    auto ids = tok->Encode(bad);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // NUL is valid UTF-8.
  auto ids = tok->Encode(std::string("a\0b", 3));
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(tok->Decode(*ids), std::string("a\0b", 3));
}

// One megabyte of a single character is one pre-tokenizer word of a million
// symbols; the merge queue must handle it in O(n log n).
TEST(BpeTest, MegabyteOfOneCharacter) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  v.Add("aa");
  v.Add("aaaa");
  const int a8 = v.Add("aaaaaaaa");
  v.merges = {"a a", "aa aa", "aaaa aaaa"};
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  const std::string text(1 << 20, 'a');
  auto ids = Enc(*tok, text);
  ASSERT_EQ(ids.size(), text.size() / 8);
  EXPECT_EQ(ids.front(), a8);
  EXPECT_EQ(ids.back(), a8);

  auto gpt2 = testing::LoadTokenizer(testing::TestDataPath("ggml-vocab-gpt-2.gguf"));
  ASSERT_NE(gpt2, nullptr);
  for (char c : {'a', ' ', '7', '!', '\n'}) {
    const std::string big(1 << 20, c);
    auto big_ids = Enc(*gpt2, big);
    EXPECT_FALSE(big_ids.empty());
    EXPECT_EQ(gpt2->Decode(big_ids), big);
  }
}

TEST(BpeTest, ConcurrentEncodesAgree) {
  auto tok = testing::LoadTokenizer(testing::TestDataPath("ggml-vocab-starcoder.gguf"));
  ASSERT_NE(tok, nullptr);
  const auto vectors = testing::ReadVectors(testing::TestDataPath("ggml-vocab-starcoder.gguf"));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (const auto& v : vectors) {
          auto ids = tok->Encode(v.text);
          if (!ids.ok() || *ids != v.ids) ++mismatches[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

// Like llama.cpp and HF without byte fallback: bytes the vocabulary cannot
// spell vanish, even when it names an unknown token (StarCoder's is
// <|endoftext|>, which must not appear in the middle of a prompt).
TEST(BpeTest, BytesTheVocabCannotSpellVanish) {
  SyntheticVocab v;
  v.Add("a");
  v.Add("b");
  v.unk = v.Add("<|endoftext|>", /*type=*/3);
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "abca"), ElementsAre(0, 1, 0));

  auto starcoder = testing::LoadTokenizer(testing::TestDataPath("ggml-vocab-starcoder.gguf"));
  ASSERT_NE(starcoder, nullptr);
  EXPECT_EQ(starcoder->unk_id(), 0);
  // U+5F469 starts with byte F1, which StarCoder's alphabet lacks.
  auto ids = Enc(*starcoder, "x\U0005F469y");
  EXPECT_THAT(ids, ::testing::Not(::testing::Contains(0)));
  EXPECT_EQ(starcoder->Decode(ids), "x\x9F\x91\xA9y");
}

}  // namespace
}  // namespace pdserve
