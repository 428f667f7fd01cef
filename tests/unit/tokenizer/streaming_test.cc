// StreamingDetokenizer: no chunk ever holds a broken UTF-8 sequence, and the
// chunks add up to the text.
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "tests/unit/tokenizer/test_util.h"

namespace pdserve {
namespace {

constexpr const char* kReplacement = "\xEF\xBF\xBD";

TEST(StreamingTest, MultiByteCharactersSplitAcrossTokens) {
  for (const char* vocab : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf"}) {
    auto tok = testing::LoadTokenizer(testing::TestDataPath(vocab));
    ASSERT_NE(tok, nullptr);
    const bool spm = tok->model() == "llama";
    bool held_back = false;
    for (const std::string text :
         {"\U0001F600 grinning, \U0001F469\u200D\U0001F4BB coder", "\u4e2d\u6587\u5b57\u7b26",
          "\u1780\u17B6\u1793\u17CB \u0915\u094D\u0937", "mixed \u00e9t\u00e9 \U0001F308!"}) {
      auto ids = tok->Encode(text);
      ASSERT_TRUE(ids.ok());
      StreamingDetokenizer detok(tok.get());
      std::string joined;
      for (TokenId id : *ids) {
        const std::string chunk = detok.Push(id);
        EXPECT_TRUE(IsValidUtf8(chunk)) << vocab << ": token " << id;
        held_back |= detok.pending_bytes() > 0;
        joined += chunk;
      }
      const std::string rest = detok.Flush();
      EXPECT_EQ(rest, "");
      joined += rest;
      EXPECT_EQ(joined, spm ? " " + text : text) << vocab;
    }
    // Some of these characters are split across byte tokens in each vocabulary.
    EXPECT_TRUE(held_back) << vocab;
  }
}

class ByteTokensTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::SyntheticVocab v;
    v.model = "llama";
    v.Add("<unk>", 2);
    v.Add("<s>", 3);
    eos_ = v.Add("</s>", 3);
    for (int b = 0; b < 256; ++b) v.Add(absl::StrFormat("<0x%02X>", b), 6);
    auto file = v.ToGguf();
    ASSERT_NE(file, nullptr);
    auto tok = Tokenizer::FromGguf(*file);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
  }
  TokenId Byte(int b) const { return 3 + b; }
  std::unique_ptr<Tokenizer> tok_;
  TokenId eos_ = -1;
};

TEST_F(ByteTokensTest, HoldsIncompleteCharacters) {
  StreamingDetokenizer d(tok_.get());
  EXPECT_EQ(d.Push(Byte(0xF0)), "");
  EXPECT_EQ(d.pending_bytes(), 1u);
  EXPECT_EQ(d.Push(Byte(0x9F)), "");
  EXPECT_EQ(d.Push(Byte(0x98)), "");
  EXPECT_EQ(d.pending_bytes(), 3u);
  EXPECT_EQ(d.Push(Byte(0x80)), "\U0001F600");
  EXPECT_EQ(d.pending_bytes(), 0u);
  EXPECT_EQ(d.Push(Byte('a')), "a");
  EXPECT_EQ(d.Flush(), "");
}

TEST_F(ByteTokensTest, BytesThatCannotCompleteAreReplacedAtOnce) {
  StreamingDetokenizer d(tok_.get());
  EXPECT_EQ(d.Push(Byte(0xFF)), kReplacement);
  EXPECT_EQ(d.Push(Byte(0xE2)), "");
  // 'A' cannot continue E2: E2 becomes U+FFFD, 'A' passes.
  EXPECT_EQ(d.Push(Byte('A')), std::string(kReplacement) + "A");
  EXPECT_EQ(d.Push(Byte(0x80)), kReplacement);  // a lone continuation byte
  EXPECT_EQ(d.pending_bytes(), 0u);
}

TEST_F(ByteTokensTest, FlushReplacesTheIncompleteTail) {
  StreamingDetokenizer d(tok_.get());
  EXPECT_EQ(d.Push(Byte('x')), "x");
  EXPECT_EQ(d.Push(Byte(0xE2)), "");
  EXPECT_EQ(d.Push(Byte(0x82)), "");
  EXPECT_EQ(d.Flush(), kReplacement);  // one U+FFFD for the one partial character
  EXPECT_EQ(d.pending_bytes(), 0u);
  EXPECT_EQ(d.Flush(), "");
}

TEST_F(ByteTokensTest, SpecialTokensRenderOnlyWhenAsked) {
  StreamingDetokenizer plain(tok_.get());
  EXPECT_EQ(plain.Push(eos_), "");
  StreamingDetokenizer rendered(tok_.get(), /*render_special=*/true);
  EXPECT_EQ(rendered.Push(eos_), "</s>");
  // A special token between the bytes of a character does not break it.
  EXPECT_EQ(plain.Push(Byte(0xC3)), "");
  EXPECT_EQ(plain.Push(eos_), "");
  EXPECT_EQ(plain.Push(Byte(0xA9)), "\u00e9");
}

}  // namespace
}  // namespace pdserve
