// SentencePiece BPE on a small vocabulary whose merges follow from the
// piece scores by hand.
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/tokenizer/test_util.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using testing::SyntheticVocab;

constexpr const char* kSp = "\xE2\x96\x81";  // ▁

struct SpmFixture {
  SyntheticVocab v;
  int unk, bos, eos, first_byte;
  int sp, h, e, l, o, i, a;
  int sp_h, he, ll, llo, sp_he, hello;

  // with_bytes: include the 256 <0xNN> tokens.
  explicit SpmFixture(bool with_bytes = true) {
    v.model = "llama";
    unk = v.Add("<unk>", 2);
    bos = v.Add("<s>", 3);
    eos = v.Add("</s>", 3);
    first_byte = static_cast<int>(v.tokens.size());
    if (with_bytes) {
      for (int b = 0; b < 256; ++b) v.Add(absl::StrFormat("<0x%02X>", b), 6);
    }
    sp = v.Add(kSp, 1, -10);
    h = v.Add("h", 1, -10);
    e = v.Add("e", 1, -10);
    l = v.Add("l", 1, -10);
    o = v.Add("o", 1, -10);
    i = v.Add("i", 1, -10);
    a = v.Add("a", 1, -10);
    sp_h = v.Add(std::string(kSp) + "h", 1, -5);
    he = v.Add("he", 1, -1);
    ll = v.Add("ll", 1, -2);
    llo = v.Add("llo", 1, -3);
    sp_he = v.Add(std::string(kSp) + "he", 1, -4);
    hello = -1;
  }
  std::unique_ptr<Tokenizer> Build() const {
    auto file = v.ToGguf();
    if (file == nullptr) return nullptr;
    auto tok = Tokenizer::FromGguf(*file);
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? *std::move(tok) : nullptr;
  }
  int Byte(int b) const { return first_byte + b; }
};

std::vector<TokenId> Enc(const Tokenizer& tok, std::string_view text, EncodeOptions opt = {}) {
  auto ids = tok.Encode(text, opt);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<TokenId>{};
}

TEST(SpmTest, HigherScoresMergeFirst) {
  SpmFixture f;
  auto tok = f.Build();
  ASSERT_NE(tok, nullptr);
  // "▁hello": he(-1), then ll(-2), then llo(-3); "▁he"(-4) is still possible
  // after "he" formed and wins over the stale "▁h"(-5).
  EXPECT_THAT(Enc(*tok, "hello"), ElementsAre(f.sp_he, f.llo));
  EXPECT_EQ(tok->Decode(Enc(*tok, "hello")), " hello");

  // A better-scored whole word takes over once its parts exist.
  f.hello = f.v.Add("hello", 1, -0.5f);
  tok = f.Build();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hello"), ElementsAre(f.sp, f.hello));
}

TEST(SpmTest, SpacesBecomeU2581AndTheLeadingSpaceIsOptional) {
  SpmFixture f;
  auto tok = f.Build();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hi hi"), ElementsAre(f.sp_h, f.i, f.sp_h, f.i));
  f.v.add_space_prefix = 0;
  tok = f.Build();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hi hi"), ElementsAre(f.h, f.i, f.sp_h, f.i));
  EXPECT_EQ(tok->Decode(Enc(*tok, "hi hi")), "hi hi");
  // A U+2581 in the text is a space to SentencePiece: it decodes as one.
  EXPECT_EQ(Enc(*tok, std::string("hi") + kSp + "hi"), Enc(*tok, "hi hi"));
}

TEST(SpmTest, ByteFallbackAndUnknown) {
  SpmFixture f;
  auto tok = f.Build();
  ASSERT_NE(tok, nullptr);
  // é (C3 A9) is not a piece: its bytes are.
  EXPECT_THAT(Enc(*tok, "h\u00e9"), ElementsAre(f.sp_h, f.Byte(0xC3), f.Byte(0xA9)));
  EXPECT_EQ(tok->Decode(Enc(*tok, "h\u00e9")), " h\u00e9");

  SpmFixture no_bytes(/*with_bytes=*/false);
  tok = no_bytes.Build();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->unk_id(), 0);  // SentencePiece default
  // One unknown token per character, as SentencePiece does.
  EXPECT_THAT(Enc(*tok, "h\u00e9\u00e9"), ElementsAre(no_bytes.sp_h, no_bytes.unk, no_bytes.unk));
}

TEST(SpmTest, BosByDefaultAndSpaceAfterSpecialTokens) {
  SpmFixture f;
  auto tok = f.Build();
  ASSERT_NE(tok, nullptr);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_FALSE(tok->add_eos());
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_THAT(Enc(*tok, "hi", {.add_special = true}), ElementsAre(f.bos, f.sp_h, f.i));
  EXPECT_THAT(Enc(*tok, "", {.add_special = true}), ElementsAre(f.bos));
  EXPECT_THAT(Enc(*tok, ""), ElementsAre());
  // llama.cpp puts a space before text that follows a special token too.
  EXPECT_THAT(Enc(*tok, "hi</s>hi", {.parse_special = true}),
              ElementsAre(f.sp_h, f.i, f.eos, f.sp_h, f.i));
  // Without parse_special "</s>" is text: '<' '/' 's' '>' are not pieces.
  EXPECT_THAT(Enc(*tok, "</s>"),
              ElementsAre(f.sp, f.Byte('<'), f.Byte('/'), f.Byte('s'), f.Byte('>')));
  f.v.add_eos = 1;
  f.v.add_bos = 0;
  tok = f.Build();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hi", {.add_special = true}), ElementsAre(f.sp_h, f.i, f.eos));
}

TEST(SpmTest, DecodeRendersEachTokenType) {
  SpmFixture f;
  auto tok = f.Build();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->TokenToBytes(f.sp_he), " he");
  EXPECT_EQ(tok->TokenToBytes(f.Byte(0x0A)), "\n");
  EXPECT_EQ(tok->TokenToBytes(f.eos), "");
  EXPECT_EQ(tok->TokenToBytes(f.eos, /*render_special=*/true), "</s>");
  EXPECT_EQ(tok->TokenToBytes(f.unk, /*render_special=*/true), "<unk>");
  EXPECT_EQ(tok->TokenToBytes(-1), "");
  EXPECT_EQ(tok->TokenToBytes(tok->n_vocab()), "");
  EXPECT_EQ(tok->Decode({f.bos, f.sp_h, f.i, f.eos}), " hi");
  EXPECT_EQ(tok->Decode({f.bos, f.sp_h, f.i, f.eos}, true), "<s> hi</s>");
}

// The text is merged word by word for speed; a token that spans a space must
// still form.
TEST(SpmTest, TokensSpanningASpaceStillMerge) {
  SpmFixture f;
  const int b = f.v.Add("b", 1, -10);
  const int sp_a = f.v.Add(std::string(kSp) + "a", 1, -5);
  f.v.Add(std::string("a") + kSp, 1, -1);
  const int a_sp_b = f.v.Add(std::string("a") + kSp + "b", 1, -0.5f);
  auto tok = f.Build();
  ASSERT_NE(tok, nullptr);
  // "▁a▁b": "a▁"(-1) beats "▁a"(-5), then "a▁b"(-0.5).
  EXPECT_THAT(Enc(*tok, "a b"), ElementsAre(f.sp, a_sp_b));
  EXPECT_THAT(Enc(*tok, "a"), ElementsAre(sp_a));
  EXPECT_THAT(Enc(*tok, "i b"), ElementsAre(f.sp, f.i, f.sp, b));
}

TEST(SpmTest, MegabyteOfOneCharacter) {
  SpmFixture f;
  f.v.Add("aa", 1, -1);
  const int a4 = f.v.Add("aaaa", 1, -1);
  auto tok = f.Build();
  ASSERT_NE(tok, nullptr);
  const std::string text(1 << 20, 'a');
  auto ids = Enc(*tok, text);
  // Equal scores merge leftmost first, so pairs become quads left to right.
  ASSERT_EQ(ids.size(), 1 + text.size() / 4);
  EXPECT_EQ(ids[0], f.sp);
  EXPECT_EQ(ids[1], a4);
  EXPECT_EQ(ids.back(), a4);
  EXPECT_EQ(tok->Decode(ids), " " + text);
}

TEST(SpmTest, RealVocabularyRoundTripsUnusualText) {
  auto tok = testing::LoadTokenizer(testing::TestDataPath("ggml-vocab-llama-spm.gguf"));
  ASSERT_NE(tok, nullptr);
  for (std::string text : {"\U0001F600\U0001F3F3\uFE0F\u200D\U0001F308 \u4e2d\u6587 \u0915\u094D",
                           "tabs\tand\nnewlines\r\n", "\x01\x02\x7f", "  leading spaces"}) {
    auto ids = tok->Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(tok->Decode(*ids), " " + text);
  }
}

}  // namespace
}  // namespace pdserve
