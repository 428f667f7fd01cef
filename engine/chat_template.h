// Chat prompts in the model's own format, recognised from the GGUF
// `tokenizer.chat_template`: ChatML (SmolLM2, Qwen) and Llama 3. pdserve
// does not run Jinja; it recognises these formats and renders them itself.
// Any other template is a clear error naming the supported formats.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace pdserve {

struct ChatMessage {
  std::string role;  // system, user, assistant (tool: passed through)
  std::string content;
};

enum class ChatFormat { kChatML, kLlama3 };

class ChatTemplate {
 public:
  // Recognises `template_text` (the GGUF tokenizer.chat_template value).
  static absl::StatusOr<ChatTemplate> Detect(std::string_view template_text);
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
  absl::StatusOr<Rendered> RenderWithRanges(const std::vector<ChatMessage>& messages,
                                            bool add_generation_prompt = true) const;

 private:
  ChatTemplate(ChatFormat format, std::string default_system)
      : format_(format), default_system_(std::move(default_system)) {}
  ChatFormat format_;
  std::string default_system_;
};

}  // namespace pdserve
