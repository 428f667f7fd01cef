// Pre-tokenizer splits: expected pieces worked out from each regex by hand,
// the hand-written matchers against ICU's regex engine on random text, and
// hostile inputs.
#include "engine/tokenizer/unicode_regex.h"

#include <random>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_pre.h"
#include "engine/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using Pieces = std::vector<std::string>;

std::unique_ptr<RegexSplitter> ForPreset(
    std::string_view name, RegexSplitter::Engine engine = RegexSplitter::Engine::kAuto) {
  const PreTokenizerPreset* preset = FindPreTokenizerPreset(name);
  EXPECT_NE(preset, nullptr) << name;
  if (preset == nullptr) return nullptr;
  std::vector<std::string> regexes(preset->regexes.begin(), preset->regexes.end());
  auto splitter = RegexSplitter::Create(regexes, engine);
  EXPECT_TRUE(splitter.ok()) << splitter.status();
  return splitter.ok() ? *std::move(splitter) : nullptr;
}

Pieces Split(const RegexSplitter& s, std::string_view text) {
  auto pieces = s.SplitToStrings(text);
  EXPECT_TRUE(pieces.ok()) << pieces.status();
  return pieces.ok() ? *pieces : Pieces{};
}

TEST(PreTokenizerTest, Gpt2) {
  auto s = ForPreset("gpt2");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->n_icu_stages(), 0);  // the hand-written matcher is used
  EXPECT_THAT(Split(*s, "Hello world"), ElementsAre("Hello", " world"));
  // Contractions are lower-case only.
  EXPECT_THAT(Split(*s, "I'm I'M we're"), ElementsAre("I", "'m", " I", "'", "M", " we", "'re"));
  // \s+(?!\S): a run of spaces leaves its last space to the next word.
  EXPECT_THAT(Split(*s, "a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(Split(*s, "a  \n b"), ElementsAre("a", "  \n", " b"));
  EXPECT_THAT(Split(*s, "end   "), ElementsAre("end", "   "));
  EXPECT_THAT(Split(*s, "\tx"), ElementsAre("\t", "x"));
  EXPECT_THAT(Split(*s, "x123abc 45"), ElementsAre("x", "123", "abc", " 45"));
  EXPECT_THAT(Split(*s, "ok!!! ?("), ElementsAre("ok", "!!!", " ?("));
  // U+0085 (NEL) and U+3000 are White_Space, as in HF's regex; é is a letter.
  EXPECT_THAT(Split(*s, "a\u0085b caf\u00e9\u3000x"),
              ElementsAre("a", "\u0085", "b", " caf\u00e9", "\u3000", "x"));
}

TEST(PreTokenizerTest, StarcoderSplitsDigitsFirst) {
  auto s = ForPreset("smollm");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->n_icu_stages(), 0);
  // Digits become pieces before the GPT-2 pattern runs on what is left, so
  // " 123" does not keep its space.
  EXPECT_THAT(Split(*s, "a 123b"), ElementsAre("a", " ", "1", "2", "3", "b"));
  EXPECT_THAT(Split(*s, "x2024 is"), ElementsAre("x", "2", "0", "2", "4", " is"));
}

TEST(PreTokenizerTest, Llama3) {
  auto s = ForPreset("llama-bpe");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->n_icu_stages(), 0);
  // Digits in groups of three from the left.
  EXPECT_THAT(Split(*s, "1234567"), ElementsAre("123", "456", "7"));
  EXPECT_THAT(Split(*s, " 12"), ElementsAre(" ", "12"));
  // Contractions in any case.
  EXPECT_THAT(Split(*s, "I'M HE'LL"), ElementsAre("I", "'M", " HE", "'LL"));
  // One non-letter, non-digit, non-newline code point joins the next word.
  EXPECT_THAT(Split(*s, "(hello\tworld"), ElementsAre("(hello", "\tworld"));
  // Punctuation takes the newlines after it.
  EXPECT_THAT(Split(*s, "ok!!\n\nnext"), ElementsAre("ok", "!!\n\n", "next"));
  // \s*[\r\n]+ then \s+(?!\S).
  EXPECT_THAT(Split(*s, "x  \n\n  y"), ElementsAre("x", "  \n\n", " ", " y"));
  EXPECT_THAT(Split(*s, "a\r\n"), ElementsAre("a", "\r\n"));
}

TEST(PreTokenizerTest, Qwen2SplitsSingleDigits) {
  auto s = ForPreset("qwen2");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->n_icu_stages(), 0);
  EXPECT_THAT(Split(*s, "x12345"), ElementsAre("x", "1", "2", "3", "4", "5"));
  EXPECT_THAT(Split(*s, "I'Ve"), ElementsAre("I", "'Ve"));
}

TEST(PreTokenizerTest, Falcon) {
  auto s = ForPreset("falcon");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->n_icu_stages(), 2);  // punctuation and three-digit stages run on ICU
  // Punctuation is split off first; groups of three ASCII digits last.
  EXPECT_THAT(Split(*s, "Hello, world 12345!"),
              ElementsAre("Hello", ",", " world", " ", "123", "45", "!"));
}

TEST(PreTokenizerTest, DeepseekCoder) {
  auto s = ForPreset("deepseek-coder");
  ASSERT_NE(s, nullptr);
  EXPECT_THAT(Split(*s, "Hi there\n123"), ElementsAre("Hi", " there", "\n", "1", "2", "3"));
  EXPECT_THAT(Split(*s, "a...b \u4e2d\u6587"), ElementsAre("a", "...", "b", " ", "\u4e2d\u6587"));
}

TEST(PreTokenizerTest, UnknownNameIsRejectedWithTheList) {
  EXPECT_EQ(FindPreTokenizerPreset("no-such-pre"), nullptr);
  const std::string names = SupportedPreTokenizerNames();
  for (const char* n : {"gpt2", "llama-bpe", "qwen2", "starcoder", "smollm", "refact",
                        "deepseek-coder", "falcon", "mpt"}) {
    EXPECT_NE(names.find(n), std::string::npos) << n;
    EXPECT_NE(FindPreTokenizerPreset(n), nullptr) << n;
  }
}

TEST(PreTokenizerTest, BadRegexIsAnError) {
  auto s = RegexSplitter::Create({"(unclosed"});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
}

// Code points chosen to hit every branch: ASCII letters around contractions,
// several kinds of space and newline, digits of each \p{N} kind, punctuation,
// symbols, marks, CJK, emoji, unassigned and control code points.
const std::vector<std::string>& Alphabet() {
  static const auto* alphabet = new std::vector<std::string>{
      " ",      " ",      " ",      "\t",     "\n",     "\r",     "\v",         "\f",     "\u0085",
      "\u00a0", "\u3000", "\u2028", "'",      "'",      "s",      "S",          "t",      "r",
      "e",      "E",      "v",      "l",      "L",      "d",      "m",          "a",      "Z",
      "0",      "1",      "7",      "\u0663", "\u216b", "\u00bd", "!",          ".",      "(",
      "$",      "_",      "\u00e9", "\u00df", "\u0301", "\u4e2d", "\U0001F600", "\u0378", "\ue000",
      "\x01",   "\u200d", "\u0130", "\u017f", "\u212a"};
  return *alphabet;
}

std::string RandomText(std::mt19937& rng, int max_len) {
  const auto& alphabet = Alphabet();
  std::uniform_int_distribution<int> len_dist(0, max_len);
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::string text;
  for (int n = len_dist(rng); n > 0; --n) text += alphabet[pick(rng)];
  return text;
}

class HandWrittenVsIcuTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HandWrittenVsIcuTest, SameSplitsOnRandomText) {
  auto fast = ForPreset(GetParam());
  auto icu = ForPreset(GetParam(), RegexSplitter::Engine::kIcuOnly);
  ASSERT_NE(fast, nullptr);
  ASSERT_NE(icu, nullptr);
  ASSERT_GT(icu->n_icu_stages(), fast->n_icu_stages());
  std::mt19937 rng(1234);
  for (int i = 0; i < 4000; ++i) {
    const std::string text = RandomText(rng, 24);
    const Pieces a = Split(*fast, text);
    const Pieces b = Split(*icu, text);
    ASSERT_EQ(a, b) << "text: '" << text << "'";
    std::string joined;
    for (const auto& p : a) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    ASSERT_EQ(joined, text);
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, HandWrittenVsIcuTest,
                         ::testing::Values("gpt2", "starcoder", "llama-bpe", "qwen2", "falcon"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

// A megabyte of a repeated character or pattern must split in linear time
// with every preset (a quadratic matcher would take minutes here and time
// out). The ICU reference engine gets a smaller dose: it is only a reference.
TEST(PreTokenizerTest, HostileInputsFinish) {
  auto inputs = [](size_t size) {
    std::vector<std::string> out;
    for (char c : {'a', ' ', '7', '\n', '!'}) out.emplace_back(size, c);
    std::string mixed;
    while (mixed.size() < size) mixed += " \u00e9'S\n\t1!\u4e2d";
    out.push_back(std::move(mixed));
    return out;
  };
  const auto big = inputs(1 << 20);
  const auto small = inputs(64 << 10);
  for (const char* name :
       {"gpt2", "starcoder", "llama-bpe", "qwen2", "falcon", "deepseek-coder", "default"}) {
    for (auto engine : {RegexSplitter::Engine::kAuto, RegexSplitter::Engine::kIcuOnly}) {
      auto s = ForPreset(name, engine);
      ASSERT_NE(s, nullptr);
      for (const std::string& text : engine == RegexSplitter::Engine::kAuto ? big : small) {
        auto pieces = s->SplitToStrings(text);
        ASSERT_TRUE(pieces.ok()) << name << ": " << pieces.status();
        size_t total = 0;
        for (const auto& p : *pieces) total += p.size();
        EXPECT_EQ(total, text.size()) << name;
      }
    }
  }
}

TEST(Utf8Test, Validation) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii, long enough to take the 8-byte path"));
  EXPECT_TRUE(IsValidUtf8("\u00e9\u4e2d\U0001F600\U0010FFFF"));
  EXPECT_FALSE(IsValidUtf8("\x80"));                  // lone continuation byte
  EXPECT_FALSE(IsValidUtf8("\xC0\x80"));              // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));          // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));      // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xF5"));                  // never a lead byte
  EXPECT_FALSE(IsValidUtf8("abc\xE2\x82"));           // truncated
  EXPECT_FALSE(IsValidUtf8("abcdefgh\xFFijklmnop"));  // inside the fast path
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE2\x82"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE2\x82\xAC"), 5u);
  EXPECT_TRUE(unicode::IsIncompleteUtf8("\xE2\x82"));
  EXPECT_TRUE(unicode::IsIncompleteUtf8("\xF0\x9F\x98"));
  EXPECT_FALSE(unicode::IsIncompleteUtf8("\xE2\x41"));  // can never complete
  EXPECT_FALSE(unicode::IsIncompleteUtf8("\xED\xA0"));  // would be a surrogate
  EXPECT_FALSE(unicode::IsIncompleteUtf8("\xFF"));
}

TEST(Utf8Test, ByteAlphabetIsGpt2s) {
  // Printable bytes keep their code point; the others count up from U+0100
  // in byte order: 0x00 -> U+0100, ' ' (0x20) -> U+0120 'Ġ', '\n' -> U+010A 'Ċ'.
  EXPECT_EQ(unicode::ByteToUnicode('a'), U'a');
  EXPECT_EQ(unicode::ByteToUnicode(0x00), 0x100u);
  EXPECT_EQ(unicode::ByteToUnicode(' '), 0x120u);
  EXPECT_EQ(unicode::ByteToUnicode('\n'), 0x10Au);
  EXPECT_EQ(unicode::ByteToUnicode(0xAD), 0x143u);  // the soft hyphen is not printable
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(unicode::UnicodeToByte(unicode::ByteToUnicode(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(unicode::UnicodeToByte(U'\u4e2d'), -1);
}

}  // namespace
}  // namespace pdserve
