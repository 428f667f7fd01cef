#include "engine/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/jinja/jinja.h"
#include "engine/tokenizer.h"

namespace pdserve {
namespace {

// Extracts a literal default system message written as
//   '<|im_start|>system\n...<|im_end|>'   (ChatML templates such as SmolLM2's)
// where \n may be a real newline or an escaped one.
std::string ChatMLDefaultSystem(std::string_view t) {
  for (std::string_view open : {"'<|im_start|>system\n", "'<|im_start|>system\\n"}) {
    size_t p = t.find(open);
    if (p == std::string_view::npos) continue;
    p += open.size();
    const size_t end = t.find("<|im_end|>", p);
    if (end == std::string_view::npos) continue;
    std::string_view body = t.substr(p, end - p);
    // Only a plain literal, not an expression such as messages[0]['content'].
    if (body.find('\'') != std::string_view::npos || body.find('{') != std::string_view::npos) {
      continue;
    }
    return std::string(body);
  }
  return "";
}

}  // namespace

ChatTokens ChatTokensOf(const Tokenizer& tokenizer) {
  ChatTokens t;
  if (tokenizer.bos_id() >= 0) t.bos = std::string(tokenizer.TokenText(tokenizer.bos_id()));
  if (tokenizer.eos_id() >= 0) t.eos = std::string(tokenizer.TokenText(tokenizer.eos_id()));
  return t;
}

absl::StatusOr<ChatTemplate> ChatTemplate::Detect(std::string_view t, ChatTokens tokens) {
  if (t.empty()) {
    return absl::FailedPreconditionError(
        "the model has no chat template (tokenizer.chat_template); send a plain prompt");
  }
  if (t.find("<|start_header_id|>") != std::string_view::npos &&
      t.find("<|eot_id|>") != std::string_view::npos) {
    return ChatTemplate(ChatFormat::kLlama3, "");
  }
  if (t.find("<|im_start|>") != std::string_view::npos) {
    return ChatTemplate(ChatFormat::kChatML, ChatMLDefaultSystem(t));
  }
  absl::StatusOr<jinja::Template> parsed = jinja::Template::Parse(t);
  if (!parsed.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("the model's chat template does not parse (",
                                                      parsed.status().message(),
                                                      "); send a plain prompt"));
  }
  ChatTemplate ct(ChatFormat::kJinja, "");
  ct.jinja_ = std::make_shared<const jinja::Template>(*std::move(parsed));
  ct.tokens_ = std::move(tokens);
  return ct;
}

ChatTemplate ChatTemplate::Of(ChatFormat format, std::string default_system) {
  return ChatTemplate(format, std::move(default_system));
}

const char* ChatTemplate::name() const {
  switch (format_) {
    case ChatFormat::kChatML:
      return "chatml";
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kJinja:
      return "jinja";
  }
  return "?";
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt) const {
  absl::StatusOr<Rendered> r = RenderWithRanges(messages, add_generation_prompt);
  if (!r.ok()) return r.status();
  return std::move(r->text);
}

absl::StatusOr<ChatTemplate::Rendered> ChatTemplate::RenderWithRanges(
    const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role.empty() || m.role.size() > 64 || !IsValidUtf8(m.role)) {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, ": bad role"));
    }
    if (!IsValidUtf8(m.content)) {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", i, ": content is not valid UTF-8"));
    }
  }
  if (format_ == ChatFormat::kJinja) return RenderJinja(messages, add_generation_prompt);
  Rendered r;
  std::string& out = r.text;
  // Appends text a client supplied, remembering where it lies.
  auto supplied = [&r](const std::string& text) {
    if (text.empty()) return;
    r.message_ranges.push_back({r.text.size(), r.text.size() + text.size()});
    r.text += text;
  };
  const bool has_system = messages[0].role == "system";
  switch (format_) {
    case ChatFormat::kChatML:
      if (!has_system && !default_system_.empty()) {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        out += "<|im_start|>";
        supplied(m.role);
        out += "\n";
        supplied(m.content);
        out += "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    case ChatFormat::kJinja:
      break;  // rendered above
    case ChatFormat::kLlama3:
      out = "<|begin_of_text|>";
      for (const ChatMessage& m : messages) {
        out += "<|start_header_id|>";
        supplied(m.role);
        out += "<|end_header_id|>\n\n";
        supplied(m.content);
        out += "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
  }
  return r;
}

absl::StatusOr<ChatTemplate::Rendered> ChatTemplate::RenderJinja(
    const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  jinja::ChatInputs in;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    // The renderer treats roles as template-level text (not literal ranges),
    // so a role may only be a plain word: no way to smuggle in a marker.
    for (char c : m.role) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') {
        return absl::InvalidArgumentError(
            absl::StrCat("message ", i, ": role must be letters, digits, '_' or '-'"));
      }
    }
    in.messages.push_back({{"role", m.role}, {"content", m.content}});
  }
  in.add_generation_prompt = add_generation_prompt;
  in.bos_token = tokens_.bos;
  in.eos_token = tokens_.eos;
  absl::StatusOr<jinja::Rendered> out = jinja_->Render(in);
  if (!out.ok()) return out.status();
  Rendered r;
  r.text = std::move(out->text);
  r.message_ranges.reserve(out->user_ranges.size());
  for (const jinja::ByteRange& b : out->user_ranges) r.message_ranges.push_back({b.begin, b.end});
  return r;
}

}  // namespace pdserve
