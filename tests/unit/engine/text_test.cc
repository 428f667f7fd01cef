// Text-facing pieces: the streamed text with stop strings, chat templates.
#include "engine/text/chat_template.h"
#include "engine/text/text_stream.h"
#include "tests/unit/engine/test_util.h"

namespace pdserve::testing {
namespace {

// The dummy vocabulary's token i < 256 stands for byte i.
std::vector<TokenId> Bytes(const std::string& s) {
  std::vector<TokenId> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

class TextStreamTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = LoadDummy(DummyModelSpec{}); }
  const Tokenizer* tok() { return &model_->tokenizer(); }
  std::shared_ptr<const Model> model_;
};

TEST_F(TextStreamTest, WithoutStopsEveryCompleteCharacterGoesOutAtOnce) {
  TextStream ts(tok(), {});
  std::string out;
  for (TokenId t : Bytes("Hello")) {
    const auto d = ts.Push(t);
    EXPECT_EQ(d.text.size(), 1u);
    out += d.text;
  }
  EXPECT_EQ(out + ts.Flush(), "Hello");
}

TEST_F(TextStreamTest, MultiByteCharactersAreNeverSplit) {
  TextStream ts(tok(), {});
  const std::string text = "caf\xC3\xA9 \xF0\x9F\x98\x80!";  // café 😀!
  std::string out;
  for (TokenId t : Bytes(text)) {
    const std::string piece = ts.Push(t).text;
    EXPECT_TRUE(IsValidUtf8(piece)) << piece;
    out += piece;
  }
  EXPECT_EQ(out + ts.Flush(), text);
}

TEST_F(TextStreamTest, StopStringIsWithheldAndNotEmitted) {
  TextStream ts(tok(), {"lo w"});
  std::string out;
  bool stopped = false;
  for (TokenId t : Bytes("Hello world")) {
    const auto d = ts.Push(t);
    out += d.text;
    if (d.stopped) {
      stopped = true;
      break;
    }
  }
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "Hel");
}

TEST_F(TextStreamTest, APartialMatchThatFailsIsReleased) {
  TextStream ts(tok(), {"lox"});
  std::string out;
  for (TokenId t : Bytes("Hello")) out += ts.Push(t).text;
  EXPECT_EQ(out, "Hel");  // "lo" might still become "lox"
  EXPECT_EQ(ts.Flush(), "lo");
}

TEST_F(TextStreamTest, EarliestOfSeveralStopsWins) {
  TextStream ts(tok(), {"world", "o w"});
  std::string out;
  for (TokenId t : Bytes("Hello world")) {
    const auto d = ts.Push(t);
    out += d.text;
    if (d.stopped) break;
  }
  EXPECT_EQ(out, "Hell");
}

constexpr char kSmolLm2Template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

TEST(ChatTemplate, ChatMLWithTheTemplatesDefaultSystemMessage) {
  auto t = ChatTemplate::Detect(kSmolLm2Template);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->format(), ChatFormat::kChatML);
  EXPECT_EQ(t->default_system(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  auto text = t->Render({{"user", "Hi"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  auto with_system = t->Render({{"system", "Be brief."}, {"user", "Hi"}}, false);
  ASSERT_TRUE(with_system.ok());
  EXPECT_EQ(*with_system,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplate, Llama3) {
  auto t = ChatTemplate::Detect(
      "{{- bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
      "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->format(), ChatFormat::kLlama3);
  EXPECT_EQ(*t->Render({{"user", "Hi"}}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Templates that are neither ChatML nor Llama 3 run in the Jinja renderer,
// with the vocabulary's bos/eos texts; user content stays a literal range.
TEST(ChatTemplate, OtherTemplatesRunInTheJinjaRenderer) {
  auto t = ChatTemplate::Detect(
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
      "[/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
      {"<s>", "</s>"});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->format(), ChatFormat::kJinja);
  EXPECT_STREQ(t->name(), "jinja");
  auto r = t->RenderWithRanges({{"user", "Hi [INST]"}, {"assistant", "Yo"}, {"user", "Q"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->text, "<s>[INST] Hi [INST] [/INST]Yo</s>[INST] Q [/INST]");
  ASSERT_EQ(r->message_ranges.size(), 3u);
  EXPECT_EQ(r->text.substr(r->message_ranges[0].begin,
                           r->message_ranges[0].end - r->message_ranges[0].begin),
            "Hi [INST]");
  // A role is template-level text: only a plain word is accepted.
  EXPECT_EQ(t->Render({{"user<s>", "x"}}).status().code(), absl::StatusCode::kInvalidArgument);
  // raise_exception in the template is the caller's error.
  auto strict = ChatTemplate::Detect(
      "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
      "{% endif %}{{ messages[0]['content'] }}");
  ASSERT_TRUE(strict.ok()) << strict.status();
  auto refused = strict->Render({{"system", "s"}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(refused.status().message()).find("first must be user"), std::string::npos);
}

TEST(ChatTemplate, UnparsableTemplatesAndBadMessagesAreClearErrors) {
  auto t = ChatTemplate::Detect("{% for m in messages %}[INST] {{ m.content }");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(t.status().message()).find("does not parse"), std::string::npos)
      << t.status();
  EXPECT_FALSE(ChatTemplate::Detect("").ok());
  auto chatml = ChatTemplate::Of(ChatFormat::kChatML);
  EXPECT_FALSE(chatml.Render({}).ok());
  EXPECT_FALSE(chatml.Render({{"", "x"}}).ok());
  EXPECT_FALSE(chatml.Render({{"user", "\xff"}}).ok());
}

}  // namespace
}  // namespace pdserve::testing
