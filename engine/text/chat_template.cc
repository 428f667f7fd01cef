#include "engine/text/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/jinja/jinja.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

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

// JSON as Python's json.dumps writes it (", " and ": " separators, keys in
// order, non-ASCII kept): what transformers' `tojson` puts in a prompt.
void AppendPyJson(const nlohmann::ordered_json& j, std::string* out) {
  if (j.is_object()) {
    *out += "{";
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      if (!first) *out += ", ";
      first = false;
      *out += nlohmann::ordered_json(k).dump(-1, ' ', false,
                                             nlohmann::ordered_json::error_handler_t::replace);
      *out += ": ";
      AppendPyJson(v, out);
    }
    *out += "}";
  } else if (j.is_array()) {
    *out += "[";
    for (size_t i = 0; i < j.size(); ++i) {
      if (i > 0) *out += ", ";
      AppendPyJson(j[i], out);
    }
    *out += "]";
  } else {
    *out += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  }
}
std::string PyJson(const nlohmann::ordered_json& j) {
  std::string out;
  AppendPyJson(j, &out);
  return out;
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
    const std::vector<ChatMessage>& messages, bool add_generation_prompt,
    const std::string& tools_json) const {
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
  nlohmann::ordered_json tools;  // null: none
  if (!tools_json.empty()) {
    tools = nlohmann::ordered_json::parse(tools_json, nullptr, /*allow_exceptions=*/false);
    if (!tools.is_array()) return absl::InvalidArgumentError("tools must be a JSON list");
  }
  std::vector<nlohmann::ordered_json> calls(messages.size());  // per message; null: none
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].tool_calls_json.empty()) continue;
    calls[i] = nlohmann::ordered_json::parse(messages[i].tool_calls_json, nullptr, false);
    if (!calls[i].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, ": tool_calls must be a list"));
    }
  }
  if (format_ == ChatFormat::kJinja) {
    return RenderJinja(messages, add_generation_prompt, tools_json);
  }
  Rendered r;
  std::string& out = r.text;
  // Appends text a client supplied, remembering where it lies.
  auto supplied = [&r](const std::string& text) {
    if (text.empty()) return;
    r.message_ranges.push_back({r.text.size(), r.text.size() + text.size()});
    r.text += text;
  };
  const bool has_system = messages[0].role == "system";
  // Tool definitions, one JSON object per line (client-supplied text).
  auto tool_lines = [&]() {
    for (const nlohmann::ordered_json& t : tools) {
      out += "\n";
      supplied(PyJson(t));
    }
  };
  // An assistant's earlier calls, as the model would have written them.
  auto call_json = [](const nlohmann::ordered_json& c, const char* args_key) {
    nlohmann::ordered_json call;
    const nlohmann::ordered_json& fn = c.is_object() && c.contains("function") ? c["function"] : c;
    const bool named = fn.is_object() && fn.contains("name") && fn["name"].is_string();
    call["name"] = named ? fn["name"] : nlohmann::ordered_json("");
    nlohmann::ordered_json args = nlohmann::ordered_json::object();
    if (fn.is_object() && fn.contains("arguments") && fn["arguments"].is_string()) {
      args = nlohmann::ordered_json::parse(fn["arguments"].get<std::string>(), nullptr, false);
      if (args.is_discarded()) args = fn["arguments"];
    }
    call[args_key] = std::move(args);
    return PyJson(call);
  };
  switch (format_) {
    case ChatFormat::kChatML: {
      // Tools as Qwen2.5's (Hermes) template writes them.
      auto system_block = [&](const std::string* system_text) {
        out += "<|im_start|>system\n";
        if (system_text != nullptr) {
          supplied(*system_text);
        } else {
          out += default_system_;
        }
        if (!tools.is_null()) {
          out +=
              "\n\n# Tools\n\nYou may call one or more functions to assist with the user "
              "query.\n\nYou are provided with function signatures within <tools></tools> XML "
              "tags:\n<tools>";
          tool_lines();
          out +=
              "\n</tools>\n\nFor each function call, return a json object with function name and "
              "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
              "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
        }
        out += "<|im_end|>\n";
      };
      if (!has_system && (!default_system_.empty() || !tools.is_null())) system_block(nullptr);
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (i == 0 && has_system && !tools.is_null()) {
          system_block(&m.content);
          continue;
        }
        if (m.role == "tool") {
          // Consecutive results share one user turn.
          if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
          out += "\n<tool_response>\n";
          supplied(m.content);
          out += "\n</tool_response>";
          if (i + 1 == messages.size() || messages[i + 1].role != "tool") out += "<|im_end|>\n";
          continue;
        }
        out += "<|im_start|>";
        supplied(m.role);
        if (calls[i].is_null() || !m.content.empty()) out += "\n";
        supplied(m.content);
        if (!calls[i].is_null()) {
          for (const nlohmann::ordered_json& c : calls[i]) {
            out += "\n<tool_call>\n";
            supplied(call_json(c, "arguments"));
            out += "\n</tool_call>";
          }
        }
        out += "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    }
    case ChatFormat::kJinja:
      break;  // rendered above
    case ChatFormat::kLlama3:
      out = "<|begin_of_text|>";
      if (!tools.is_null()) {
        // Llama 3.1's JSON tool calling, in the system turn.
        out += "<|start_header_id|>system<|end_header_id|>\n\n";
        if (has_system) supplied(messages[0].content);
        out +=
            "\n\nGiven the following functions, please respond with a JSON for a function call "
            "with its proper arguments that best answers the given prompt.\n\nRespond in the "
            "format {\"name\": function name, \"parameters\": dictionary of argument name and "
            "its value}. Do not use variables.\n";
        tool_lines();
        out += "<|eot_id|>";
      }
      for (size_t i = (!tools.is_null() && has_system) ? 1 : 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        out += "<|start_header_id|>";
        if (m.role == "tool") {
          out += "ipython";
        } else {
          supplied(m.role);
        }
        out += "<|end_header_id|>\n\n";
        supplied(m.content);
        if (!calls[i].is_null()) {
          for (const nlohmann::ordered_json& c : calls[i]) supplied(call_json(c, "parameters"));
        }
        out += "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
  }
  return r;
}

absl::StatusOr<ChatTemplate::Rendered> ChatTemplate::RenderJinja(
    const std::vector<ChatMessage>& messages, bool add_generation_prompt,
    const std::string& tools_json) const {
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
    nlohmann::ordered_json msg = {{"role", m.role}, {"content", m.content}};
    if (!m.tool_calls_json.empty()) {
      // As transformers' templates expect: arguments as an object.
      nlohmann::ordered_json calls =
          nlohmann::ordered_json::parse(m.tool_calls_json, nullptr, false);
      for (nlohmann::ordered_json& c : calls) {
        if (!c.is_object() || !c.contains("function") || !c["function"].is_object()) continue;
        nlohmann::ordered_json& fn = c["function"];
        if (fn.contains("arguments") && fn["arguments"].is_string()) {
          nlohmann::ordered_json args =
              nlohmann::ordered_json::parse(fn["arguments"].get<std::string>(), nullptr, false);
          if (!args.is_discarded()) fn["arguments"] = std::move(args);
        }
      }
      if (m.content.empty()) msg["content"] = nullptr;
      msg["tool_calls"] = std::move(calls);
    }
    if (!m.tool_call_id.empty()) msg["tool_call_id"] = m.tool_call_id;
    in.messages.push_back(std::move(msg));
  }
  if (!tools_json.empty()) in.tools = nlohmann::ordered_json::parse(tools_json, nullptr, false);
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
