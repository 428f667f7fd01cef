// Renders a model's own chat template (the Jinja source in the GGUF's
// tokenizer.chat_template) the way Hugging Face transformers does:
// jinja2 with trim_blocks and lstrip_blocks, tojson without HTML escaping,
// raise_exception() and strftime_now(). The output carries the byte ranges
// that came from message content, so the caller can tokenize those as plain
// text and keep special tokens typed by users from acting as control tokens.
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/jinja/limits.h"
#include "engine/jinja/value.h"
#include "nlohmann/json.hpp"

namespace pdserve::jinja {

struct Stmt;

struct ChatInputs {
  // [{role, content, tool_calls?, tool_call_id?, name?, ...}], as in the
  // OpenAI request. Every string in a message except its "role" counts as
  // user content.
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  // The tool definitions; null renders as None (transformers passes
  // tools=None when a request has none). All strings count as user content.
  nlohmann::ordered_json tools;
  bool add_generation_prompt = true;
  std::string bos_token;
  std::string eos_token;
  // More variables (enable_thinking, pad_token, ...); template-level, not
  // user content. An object.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
  // The time strftime_now() formats (UTC); unset: the current time.
  std::optional<std::time_t> now;
};

struct Rendered {
  std::string text;
  // Sorted, disjoint byte ranges of `text` that came from user content.
  std::vector<ByteRange> user_ranges;
};

class Template {
 public:
  // Parses `source`; syntax errors, unknown filters and unknown tests are
  // errors naming line and column.
  static absl::StatusOr<Template> Parse(std::string_view source, const Limits& limits = {});

  absl::StatusOr<Rendered> Render(const ChatInputs& inputs) const;
  // Renders with arbitrary variables (a JSON object; strings are not user
  // content unless listed in `user_keys`, whose whole subtrees are).
  absl::StatusOr<Rendered> RenderVariables(const nlohmann::ordered_json& variables,
                                           const std::vector<std::string>& user_keys = {},
                                           std::optional<std::time_t> now = std::nullopt) const;

 private:
  struct Parsed;
  Template(std::shared_ptr<const Parsed> parsed, Limits limits)
      : parsed_(std::move(parsed)), limits_(limits) {}
  absl::StatusOr<Rendered> RenderDict(Dict variables, std::optional<std::time_t> now) const;
  std::shared_ptr<const Parsed> parsed_;
  Limits limits_;
};

// One-shot helper: parse and render.
absl::StatusOr<Rendered> RenderChat(std::string_view source, const ChatInputs& inputs,
                                    const Limits& limits = {});

// JSON -> Value; strings are marked user content when `user` (object keys
// too). Depth is bounded by `max_depth`.
absl::StatusOr<Value> FromJson(const nlohmann::ordered_json& j, bool user, int max_depth);

}  // namespace pdserve::jinja
