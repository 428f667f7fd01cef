// Special tokens: when they are parsed out of the text, which ids end
// generation, BOS/EOS handling.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/tokenizer/test_util.h"

namespace pdserve {
namespace {

using testing::AddByteAlphabet;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::Not;
using testing::SyntheticVocab;

constexpr int kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4;

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

TokenId B(char c) { return static_cast<unsigned char>(c); }

TEST(SpecialTokensTest, Gpt2EndOfText) {
  auto tok = testing::LoadTokenizer(testing::TestDataPath("ggml-vocab-gpt-2.gguf"));
  ASSERT_NE(tok, nullptr);
  const TokenId eot = 50256;
  EXPECT_EQ(tok->FindToken("<|endoftext|>"), eot);
  EXPECT_EQ(tok->eos_id(), eot);
  EXPECT_EQ(tok->eot_id(), eot);
  EXPECT_THAT(tok->eog_ids(), ElementsAre(eot));
  EXPECT_TRUE(tok->IsSpecial(eot));
  EXPECT_FALSE(tok->IsSpecial(tok->FindToken("Hello")));
  EXPECT_THAT(Enc(*tok, "<|endoftext|>"), Not(Contains(eot)));
  EXPECT_THAT(Enc(*tok, "<|endoftext|>", {.parse_special = true}), ElementsAre(eot));
  // The text around a special token is tokenized on its own.
  std::vector<TokenId> expected = Enc(*tok, "Hi");
  expected.push_back(eot);
  for (TokenId id : Enc(*tok, " there")) expected.push_back(id);
  EXPECT_EQ(Enc(*tok, "Hi<|endoftext|> there", {.parse_special = true}), expected);
  // Control tokens render only when asked.
  EXPECT_EQ(tok->Decode(expected), "Hi there");
  EXPECT_EQ(tok->Decode(expected, /*render_special=*/true), "Hi<|endoftext|> there");
}

TEST(SpecialTokensTest, UserDefinedTokensAreAlwaysMatched) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int ctl = v.Add("<ctl>", kControl);
  const int tool = v.Add("<tool>", kUserDefined);
  const int unk = v.Add("<unk>", kUnknown);
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  const std::string text = "a<tool>b<ctl><unk>";
  EXPECT_THAT(Enc(*tok, text), ElementsAre(B('a'), tool, B('b'), B('<'), B('c'), B('t'), B('l'),
                                           B('>'), B('<'), B('u'), B('n'), B('k'), B('>')));
  EXPECT_THAT(Enc(*tok, text, {.parse_special = true}),
              ElementsAre(B('a'), tool, B('b'), ctl, unk));
  // User-defined tokens are content: rendered without render_special.
  EXPECT_EQ(tok->Decode({tool, ctl}), "<tool>");
  EXPECT_TRUE(tok->IsSpecial(tool));
  EXPECT_TRUE(tok->IsSpecial(ctl));
  EXPECT_TRUE(tok->IsSpecial(unk));
}

TEST(SpecialTokensTest, LeftmostThenLongestMatch) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int ab = v.Add("<ab", kControl);
  const int abc = v.Add("<abc", kControl);
  v.Add("bcd>", kControl);
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "x<abcd>", {.parse_special = true}),
              ElementsAre(B('x'), abc, B('d'), B('>')));
  EXPECT_THAT(Enc(*tok, "<ab<abc", {.parse_special = true}), ElementsAre(ab, abc));
}

TEST(SpecialTokensTest, SpecialTextsThatAreNotWholeUtf8AreNeverMatched) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  v.Add("\xE2\x82", kUserDefined);  // first two bytes of "€"
  v.Add("", kUserDefined);          // an empty text must not match everywhere
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  auto ids = Enc(*tok, "\u20ac!", {.parse_special = true});
  EXPECT_THAT(ids, ElementsAre(0xE2, 0x82, 0xAC, B('!')));  // byte-level tokens
  EXPECT_EQ(tok->Decode(ids), "\u20ac!");
}

TEST(SpecialTokensTest, EndOfGenerationSetFollowsLlamaCpp) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int im_end = v.Add("<|im_end|>", kNormal);  // mislabelled: becomes control
  const int eot_id = v.Add("<|eot_id|>", kControl);
  const int eom = v.Add("<|eom_id|>", kControl);
  const int fim_pad = v.Add("<|fim_pad|>", kControl);
  const int eos = v.Add("</eos>", kControl);
  const int other = v.Add("<|im_start|>", kControl);
  v.eos = eos;
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->eot_id(), eot_id);  // first in llama.cpp's candidate list
  EXPECT_EQ(tok->eom_id(), eom);
  EXPECT_THAT(tok->eog_ids(), ElementsAre(im_end, eot_id, eom, fim_pad, eos));
  EXPECT_TRUE(tok->IsEog(im_end));
  EXPECT_FALSE(tok->IsEog(other));
  EXPECT_FALSE(tok->IsEog(-1));
  EXPECT_FALSE(tok->IsEog(1 << 30));
  // The mislabelled end marker is now a control token.
  EXPECT_TRUE(tok->IsSpecial(im_end));
  EXPECT_EQ(tok->TokenToBytes(im_end), "");
  EXPECT_THAT(Enc(*tok, "<|im_end|>", {.parse_special = true}), ElementsAre(im_end));
  EXPECT_THAT(Enc(*tok, "<|im_end|>"), Not(Contains(im_end)));

  // An EOT named by the file wins over detection.
  v.eot = im_end;
  tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->eot_id(), im_end);
}

TEST(SpecialTokensTest, HarmonyEndIsNotEog) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int end = v.Add("<|end|>", kControl);
  const int ret = v.Add("<|return|>", kControl);
  const int call = v.Add("<|call|>", kControl);
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->eog_ids(), ElementsAre(ret, call));
  EXPECT_EQ(tok->TokenToBytes(end), "<|end|>");  // now user-defined: rendered
}

TEST(SpecialTokensTest, BosAndEosFollowTheFile) {
  SyntheticVocab v;
  AddByteAlphabet(&v);
  const int bos = v.Add("<s>", kControl);
  const int eos = v.Add("</s>", kControl);
  v.bos = bos;
  v.eos = eos;
  auto tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_FALSE(tok->add_bos());  // gpt2 default
  EXPECT_THAT(Enc(*tok, "a", {.add_special = true}), ElementsAre(B('a')));
  v.add_bos = 1;
  v.add_eos = 1;
  tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "a", {.add_special = true}), ElementsAre(bos, B('a'), eos));
  EXPECT_THAT(Enc(*tok, "a"), ElementsAre(B('a')));
  // Asked to add a BOS it does not have: nothing is added.
  v.bos = -1;
  v.eos = -1;
  tok = Build(v);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_THAT(Enc(*tok, "a", {.add_special = true}), ElementsAre(B('a')));
}

}  // namespace
}  // namespace pdserve
