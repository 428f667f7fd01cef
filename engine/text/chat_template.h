// Chat prompts in the model's own format, from the GGUF
// `tokenizer.chat_template`. ChatML (SmolLM2) and Llama 3 templates are
// recognised and rendered natively; any other template runs in the Jinja
// renderer of engine/jinja/ (checked byte for byte against Python jinja2 on
// a corpus of real templates). A template that fails to parse is a clear
// error at load time.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace pdserve {
namespace jinja {
class Template;
}

struct ChatMessage {
  ChatMessage() = default;
  ChatMessage(std::string role, std::string content, std::string tool_calls_json = "",
              std::string tool_call_id = "")
      : role(std::move(role)),
        content(std::move(content)),
        tool_calls_json(std::move(tool_calls_json)),
        tool_call_id(std::move(tool_call_id)) {}

  std::string role;  // system, user, assistant, tool
  std::string content;
  std::string tool_calls_json;  // assistant: OpenAI's tool_calls list (JSON text), or empty
  std::string tool_call_id;     // tool: the call answered
};

enum class ChatFormat { kChatML, kLlama3, kJinja };

// The special-token texts a Jinja template may write (`bos_token`,
// `eos_token`), from the model's vocabulary.
struct ChatTokens {
  std::string bos;
  std::string eos;
};
ChatTokens ChatTokensOf(const Tokenizer& tokenizer);

class ChatTemplate {
 public:
  // Recognises `template_text` (the GGUF tokenizer.chat_template value).
  static absl::StatusOr<ChatTemplate> Detect(std::string_view template_text,
                                             ChatTokens tokens = {});
  static ChatTemplate Of(ChatFormat format, std::string default_system = "");

  ChatFormat format() const { return format_; }
  const char* name() const;
  // The system message the template inserts when the chat has none.
  const std::string& default_system() const { return default_system_; }

  // The prompt text, with special tokens written out (tokenize it with
  // parse_special). Roles must be non-empty and content valid UTF-8.
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages,
                                     bool add_generation_prompt = true) const;

  // The same text, with the byte ranges the messages supplied (roles and
  // contents, in order): tokenize with parse_special and these as
  // EncodeOptions::literal_ranges, so that a "<|im_end|>" a user typed stays
  // text and only the template's own markers become special tokens.
  struct Rendered {
    std::string text;
    std::vector<ByteRange> message_ranges;
  };
  // `tools_json`: OpenAI's tools list (JSON text) or empty. A Jinja
  // template gets it as `tools`; ChatML and Llama 3 describe the tools in
  // the system message (Hermes/Qwen2.5 and Llama 3.1 JSON conventions).
  absl::StatusOr<Rendered> RenderWithRanges(const std::vector<ChatMessage>& messages,
                                            bool add_generation_prompt = true,
                                            const std::string& tools_json = "") const;

 private:
  ChatTemplate(ChatFormat format, std::string default_system)
      : format_(format), default_system_(std::move(default_system)) {}
  absl::StatusOr<Rendered> RenderJinja(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt,
                                       const std::string& tools_json) const;
  ChatFormat format_;
  std::string default_system_;
  std::shared_ptr<const jinja::Template> jinja_;  // kJinja only
  ChatTokens tokens_;
};

}  // namespace pdserve
