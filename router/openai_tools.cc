#include "router/openai_tools.h"

#include <algorithm>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/secure_random.h"
#include "engine/grammar/grammar.h"
#include "router/openai_protocol.h"

namespace pdserve::router::openai {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";
constexpr size_t kMaxTools = 128;

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  }
  return true;
}

std::string NewCallId() { return absl::StrCat("call_", SecureRandomHex(12)); }

const ToolDef* FindTool(const ToolRequest& r, const std::string& name) {
  for (const ToolDef& t : r.tools) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// One call object {"name", "arguments"|"parameters"} naming a defined tool.
std::optional<ToolCall> CallOf(const ojson& j, const ToolRequest& r) {
  if (!j.is_object()) return std::nullopt;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string()) return std::nullopt;
  if (FindTool(r, name->get<std::string>()) == nullptr) return std::nullopt;
  auto args = j.find("arguments");
  if (args == j.end()) args = j.find("parameters");
  ToolCall call;
  call.id = NewCallId();
  call.name = name->get<std::string>();
  if (args == j.end() || args->is_null()) {
    call.arguments = "{}";
  } else if (args->is_string()) {
    call.arguments = args->get<std::string>();  // already JSON text (some models write it so)
  } else {
    call.arguments = args->dump(-1, ' ', false, json::error_handler_t::replace);
  }
  return call;
}

std::string Trim(std::string_view s) {
  return std::string(absl::StripAsciiWhitespace(absl::string_view(s.data(), s.size())));
}

}  // namespace

std::optional<ApiError> ParseTools(const ojson* tools, const ojson* tool_choice, ToolRequest* out) {
  if (tools != nullptr && !tools->is_null()) {
    if (!tools->is_array()) return BadRequest("'tools' must be a list", "tools");
    if (tools->size() > kMaxTools) {
      return BadRequest(absl::StrCat("at most ", kMaxTools, " 'tools'"), "tools");
    }
    for (size_t i = 0; i < tools->size(); ++i) {
      const ojson& t = (*tools)[i];
      const std::string param = absl::StrCat("tools[", i, "]");
      auto type = t.is_object() ? t.find("type") : t.end();
      if (type == t.end() || !type->is_string() || type->get<std::string>() != "function") {
        return BadRequest(absl::StrCat(param, ".type must be \"function\""), param + ".type");
      }
      auto fn = t.find("function");
      if (fn == t.end() || !fn->is_object()) {
        return BadRequest(absl::StrCat(param, ".function must be an object"), param + ".function");
      }
      auto name = fn->find("name");
      if (name == fn->end() || !name->is_string() || !ValidName(name->get<std::string>())) {
        return BadRequest(
            absl::StrCat(param, ".function.name must be 1 to 64 letters, digits, '_' or '-'"),
            param + ".function.name");
      }
      ToolDef def;
      def.name = name->get<std::string>();
      if (FindTool(*out, def.name) != nullptr) {
        return BadRequest(absl::StrCat("two tools are named '", def.name, "'"),
                          param + ".function.name");
      }
      if (auto d = fn->find("description"); d != fn->end() && !d->is_null() && !d->is_string()) {
        return BadRequest(absl::StrCat(param, ".function.description must be a string"),
                          param + ".function.description");
      }
      def.parameters = ojson::object();
      if (auto p = fn->find("parameters"); p != fn->end() && !p->is_null()) {
        if (!p->is_object()) {
          return BadRequest(
              absl::StrCat(param, ".function.parameters must be a JSON schema object"),
              param + ".function.parameters");
        }
        def.parameters = *p;  // keys in the client's order: properties are generated in it
        if (absl::Status s = grammar::CheckSchema(def.parameters.dump(), /*strict=*/false);
            !s.ok()) {
          return BadRequest(absl::StrCat(param, ".function.parameters: ", s.message()),
                            param + ".function.parameters");
        }
      }
      def.definition = t;
      out->tools.push_back(std::move(def));
    }
  }
  out->choice = ToolChoice::kAuto;
  if (tool_choice != nullptr && !tool_choice->is_null()) {
    if (tool_choice->is_string()) {
      const std::string c = tool_choice->get<std::string>();
      if (c == "none") {
        out->choice = ToolChoice::kNone;
      } else if (c == "auto") {
        out->choice = ToolChoice::kAuto;
      } else if (c == "required") {
        out->choice = ToolChoice::kRequired;
      } else {
        return BadRequest(absl::StrCat("'tool_choice' '", c,
                                       "' is not one of none, auto, required or a function"),
                          "tool_choice");
      }
    } else if (tool_choice->is_object()) {
      auto type = tool_choice->find("type");
      auto fn = tool_choice->find("function");
      auto name = fn != tool_choice->end() && fn->is_object() ? fn->find("name") : fn;
      if (type == tool_choice->end() || !type->is_string() ||
          type->get<std::string>() != "function" || fn == tool_choice->end() || !fn->is_object() ||
          name == fn->end() || !name->is_string()) {
        return BadRequest(
            "'tool_choice' must be none, auto, required or {\"type\": \"function\", "
            "\"function\": {\"name\": ...}}",
            "tool_choice");
      }
      out->choice = ToolChoice::kNamed;
      out->named = name->get<std::string>();
      if (FindTool(*out, out->named) == nullptr) {
        return BadRequest(
            absl::StrCat("'tool_choice' names '", out->named, "', which is not among 'tools'"),
            "tool_choice");
      }
    } else {
      return BadRequest("'tool_choice' must be a string or an object", "tool_choice");
    }
  }
  if (out->tools.empty() && out->forced()) {
    return BadRequest("'tool_choice' requires 'tools'", "tool_choice");
  }
  return std::nullopt;
}

std::string ToolsJson(const ToolRequest& request) {
  ojson arr = ojson::array();
  for (const ToolDef& t : request.tools) arr.push_back(t.definition);
  return arr.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ForcedCallSchema(const ToolRequest& request) {
  ojson any = ojson::array();
  for (const ToolDef& t : request.tools) {
    if (request.choice == ToolChoice::kNamed && t.name != request.named) continue;
    ojson call;
    call["type"] = "object";
    call["properties"]["name"]["const"] = t.name;
    call["properties"]["arguments"] =
        t.parameters.empty() ? ojson{{"type", "object"}} : t.parameters;
    call["required"] = ojson::array({"name", "arguments"});
    call["additionalProperties"] = false;
    any.push_back(std::move(call));
  }
  ojson schema = any.size() == 1 ? any[0] : ojson{{"anyOf", any}};
  return schema.dump(-1, ' ', false, json::error_handler_t::replace);
}

ParsedOutput ParseToolCalls(const std::string& text, const ToolRequest& request) {
  ParsedOutput out;
  // Hermes / Qwen: <tool_call> blocks.
  std::string rest;
  size_t pos = 0;
  while (true) {
    const size_t open = text.find(kCallOpen, pos);
    if (open == std::string::npos) break;
    const size_t body = open + kCallOpen.size();
    size_t close = text.find(kCallClose, body);
    const bool closed = close != std::string::npos;
    if (!closed) close = text.size();  // a model that stops right after the JSON
    ojson j = ojson::parse(text.substr(body, close - body), nullptr, false);
    std::optional<ToolCall> call = j.is_discarded() ? std::nullopt : CallOf(j, request);
    const size_t end = closed ? close + kCallClose.size() : close;
    if (call) {
      rest += text.substr(pos, open - pos);
      out.calls.push_back(std::move(*call));
    } else {
      rest += text.substr(pos, end - pos);
    }
    pos = end;
  }
  if (!out.calls.empty()) {
    rest += text.substr(pos);
    out.content = Trim(rest);
    return out;
  }
  // Llama 3.x: the whole output is a call, or a list of calls.
  const std::string trimmed = Trim(text);
  if (!trimmed.empty() && (trimmed[0] == '{' || trimmed[0] == '[')) {
    ojson j = ojson::parse(trimmed, nullptr, false);
    if (!j.is_discarded()) {
      std::vector<ToolCall> calls;
      const ojson list = j.is_array() ? j : ojson::array({j});
      for (const ojson& c : list) {
        std::optional<ToolCall> call = CallOf(c, request);
        if (!call) {
          calls.clear();
          break;
        }
        calls.push_back(std::move(*call));
      }
      if (!calls.empty()) {
        out.calls = std::move(calls);
        return out;
      }
    }
  }
  out.content = text;
  return out;
}

std::string ToolCallStreamer::Push(const std::string& text) {
  all_ += text;
  if (holding_) return "";
  // A leading JSON value may be a Llama-style call: hold it all.
  if (streamed_ == 0) {
    const size_t first = all_.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return "";  // only whitespace so far
    if (all_[first] == '{' || all_[first] == '[') {
      holding_ = true;
      return "";
    }
  }
  const std::string_view pending = std::string_view(all_).substr(streamed_);
  const size_t open = pending.find(kCallOpen);
  if (open != std::string_view::npos) {
    holding_ = true;
    std::string out(pending.substr(0, open));
    streamed_ += open;
    return out;
  }
  // Hold back a suffix that may grow into "<tool_call>".
  size_t keep = 0;
  for (size_t n = std::min(pending.size(), kCallOpen.size() - 1); n > 0; --n) {
    if (kCallOpen.substr(0, n) == pending.substr(pending.size() - n)) {
      keep = n;
      break;
    }
  }
  std::string out(pending.substr(0, pending.size() - keep));
  streamed_ += out.size();
  return out;
}

ParsedOutput ToolCallStreamer::Finish(const ToolRequest& request) {
  const std::string held = all_.substr(streamed_);
  ParsedOutput parsed = ParseToolCalls(held, request);
  if (parsed.calls.empty()) parsed.content = held;
  streamed_ = all_.size();
  return parsed;
}

}  // namespace pdserve::router::openai
