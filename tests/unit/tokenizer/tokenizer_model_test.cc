// The tokenizer of the bundled model, SmolLM2-135M-Instruct (byte-level BPE,
// pre-tokenizer `smollm`). Expected ids come from the vocabulary itself:
// common words are single tokens, digits are split one by one.
#include <unistd.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/tokenizer/test_util.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::UnorderedElementsAre;

class SmolLm2TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(PDSERVE_MODEL_PATH, R_OK) != 0) {
      GTEST_SKIP() << PDSERVE_MODEL_PATH << " is absent; run scripts/fetch_model.sh";
    }
    tok_ = testing::LoadTokenizer(PDSERVE_MODEL_PATH);
    ASSERT_NE(tok_, nullptr);
  }
  std::vector<TokenId> Enc(std::string_view text, EncodeOptions opt = {}) {
    auto ids = tok_->Encode(text, opt);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<TokenId>{};
  }
  TokenId Id(std::string_view text) {
    const TokenId id = tok_->FindToken(text);
    EXPECT_GE(id, 0) << "'" << text << "' is not in the vocabulary";
    return id;
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SmolLm2TokenizerTest, Metadata) {
  EXPECT_EQ(tok_->model(), "gpt2");
  EXPECT_EQ(tok_->pre(), "smollm");
  EXPECT_EQ(tok_->n_vocab(), 49152);
  EXPECT_EQ(tok_->bos_id(), 1);  // <|im_start|>
  EXPECT_EQ(tok_->eos_id(), 2);  // <|im_end|>
  EXPECT_EQ(tok_->eot_id(), 2);
  EXPECT_FALSE(tok_->add_bos());
  EXPECT_EQ(tok_->TokenText(0), "<|endoftext|>");
  // EOS, <|endoftext|>, and <reponame> (llama.cpp's FIM repo marker) end
  // generation; <|im_start|> does not.
  EXPECT_THAT(tok_->eog_ids(), UnorderedElementsAre(0, 2, 4));
  EXPECT_TRUE(tok_->IsEog(2));
  EXPECT_FALSE(tok_->IsEog(1));
}

TEST_F(SmolLm2TokenizerTest, CapitalOfFrance) {
  const auto ids = Enc("The capital of France is");
  EXPECT_THAT(ids, ElementsAre(Id("The"), Id("\u0120capital"), Id("\u0120of"), Id("\u0120France"),
                               Id("\u0120is")));
  EXPECT_THAT(ids, ElementsAre(504, 3575, 282, 4649, 314));
  EXPECT_EQ(tok_->Decode(ids), "The capital of France is");
}

TEST_F(SmolLm2TokenizerTest, DigitsOneByOne) {
  // "Ġ2" would not be reachable anyway: smollm splits digits before words.
  EXPECT_THAT(Enc("in 2024"),
              ElementsAre(Id("in"), Id("\u0120"), Id("2"), Id("0"), Id("2"), Id("4")));
}

TEST_F(SmolLm2TokenizerTest, ChatSpecialTokens) {
  const std::string prompt = "<|im_start|>user\nHi<|im_end|>\n";
  EXPECT_THAT(Enc(prompt, {.parse_special = true}),
              ElementsAre(1, Id("user"), Id("\u010a"), Id("Hi"), 2, Id("\u010a")));
  // As plain text the markers are spelled out, never the control ids.
  const auto plain = Enc(prompt);
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(1)));
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(2)));
  EXPECT_EQ(tok_->Decode(plain), prompt);
  EXPECT_EQ(tok_->Decode(Enc(prompt, {.parse_special = true})), "user\nHi\n");
  EXPECT_EQ(tok_->Decode(Enc(prompt, {.parse_special = true}), /*render_special=*/true), prompt);
}

TEST_F(SmolLm2TokenizerTest, RoundTripAndStreaming) {
  const std::string text =
      "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # \u00e9t\u00e9 "
      "\U0001F680\n\n\tTabs, \"quotes\" and 1,234.5 numbers; \u65e5\u672c\u8a9e.";
  const auto ids = Enc(text);
  EXPECT_EQ(tok_->Decode(ids), text);
  StreamingDetokenizer detok(tok_.get());
  std::string joined;
  for (TokenId id : ids) {
    const std::string chunk = detok.Push(id);
    EXPECT_TRUE(IsValidUtf8(chunk));
    joined += chunk;
  }
  joined += detok.Flush();
  EXPECT_EQ(joined, text);
}

}  // namespace
}  // namespace pdserve
