#include "engine/jinja/jinja.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/jinja/interpreter.h"
#include "engine/jinja/parser.h"

namespace pdserve::jinja {

struct Template::Parsed {
  Body body;
};

namespace {

absl::Status PosError(SourcePos p, std::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat("template error at line ", p.line, ", column ",
                                                 p.column, ": ", std::string(msg)));
}

// Unknown filters and tests are errors at load time, as in jinja2; inside an
// if block or a conditional expression jinja2 defers the error until the
// filter runs, and so do we.
absl::Status CheckExpr(const Expr* e) {
  if (e == nullptr || e->kind == ExprKind::kCondExpr) return absl::OkStatus();
  if (e->kind == ExprKind::kFilter && !IsKnownFilter(e->name)) {
    return PosError(e->pos, absl::StrCat("no filter named '", e->name, "'"));
  }
  if (e->kind == ExprKind::kTest && !IsKnownTest(e->name)) {
    return PosError(e->pos, absl::StrCat("no test named '", e->name, "'"));
  }
  for (const auto& a : e->args) {
    if (auto st = CheckExpr(a.get()); !st.ok()) return st;
  }
  for (const auto& [k, a] : e->kwargs) {
    if (auto st = CheckExpr(a.get()); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status CheckBody(const Body& body) {
  for (const auto& s : body) {
    for (const Expr* e : {s->expr.get(), s->filter.get()}) {
      if (auto st = CheckExpr(e); !st.ok()) return st;
    }
    for (const auto& d : s->defaults) {
      if (auto st = CheckExpr(d.get()); !st.ok()) return st;
    }
    if (s->kind == StmtKind::kIf) continue;
    if (auto st = CheckBody(s->body); !st.ok()) return st;
    if (auto st = CheckBody(s->else_body); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> FromJsonAt(const nlohmann::ordered_json& j, bool user, int depth,
                                 int max_depth, bool in_message) {
  if (depth > max_depth) {
    return absl::InvalidArgumentError(
        absl::StrCat("template input nested deeper than ", max_depth, " levels"));
  }
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::None();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::Int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::Float(static_cast<double>(u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Value::Float(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::String(user ? Text::User(j.get<std::string>()) : Text(j.get<std::string>()));
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& e : j) {
        auto v = FromJsonAt(e, user, depth + 1, max_depth, false);
        if (!v.ok()) return v;
        l.push_back(std::move(*v));
      }
      return Value::MakeList(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) {
        // A message's role is validated by the caller and is template
        // structure, not user text.
        const bool field_user = user && !(in_message && it.key() == "role");
        auto v = FromJsonAt(it.value(), field_user, depth + 1, max_depth, false);
        if (!v.ok()) return v;
        d.emplace_back(user ? Text::User(it.key()) : Text(it.key()), std::move(*v));
      }
      return Value::MakeDict(std::move(d));
    }
    default:
      return absl::InvalidArgumentError("template input holds a binary JSON value");
  }
}

}  // namespace

absl::StatusOr<Value> FromJson(const nlohmann::ordered_json& j, bool user, int max_depth) {
  return FromJsonAt(j, user, 0, max_depth, false);
}

absl::StatusOr<Template> Template::Parse(std::string_view source, const Limits& limits) {
  auto body = jinja::Parse(source, limits.max_nesting);
  if (!body.ok()) return body.status();
  if (auto st = CheckBody(*body); !st.ok()) return st;
  auto parsed = std::make_shared<Parsed>();
  parsed->body = std::move(*body);
  return Template(std::move(parsed), limits);
}

absl::StatusOr<Rendered> Template::RenderDict(Dict variables,
                                              std::optional<std::time_t> now) const {
  Interpreter in(limits_, now.value_or(std::time(nullptr)));
  auto text = in.Run(parsed_->body, std::move(variables));
  if (!text.ok()) return text.status();
  Rendered out;
  out.text = std::move(text->s);
  out.user_ranges = std::move(text->user);
  return out;
}

absl::StatusOr<Rendered> Template::Render(const ChatInputs& inputs) const {
  if (!inputs.messages.is_array()) {
    return absl::InvalidArgumentError("chat template input: messages must be an array");
  }
  if (!inputs.extra.is_object()) {
    return absl::InvalidArgumentError("chat template input: extra must be an object");
  }
  const int max_depth = limits_.max_nesting;
  Dict vars;
  List messages;
  for (const auto& m : inputs.messages) {
    if (!m.is_object()) {
      return absl::InvalidArgumentError("chat template input: each message must be an object");
    }
    auto v = FromJsonAt(m, true, 1, max_depth, /*in_message=*/true);
    if (!v.ok()) return v.status();
    messages.push_back(std::move(*v));
  }
  for (auto it = inputs.extra.begin(); it != inputs.extra.end(); ++it) {
    auto v = FromJson(it.value(), false, max_depth);
    if (!v.ok()) return v.status();
    vars.emplace_back(Text(it.key()), std::move(*v));
  }
  auto tools = FromJson(inputs.tools, true, max_depth);
  if (!tools.ok()) return tools.status();
  auto set = [&](std::string_view k, Value v) {
    vars.erase(
        std::remove_if(vars.begin(), vars.end(), [&](const auto& kv) { return kv.first.s == k; }),
        vars.end());
    vars.emplace_back(Text(std::string(k)), std::move(v));
  };
  set("messages", Value::MakeList(std::move(messages)));
  set("tools", std::move(*tools));
  set("add_generation_prompt", Value::Bool(inputs.add_generation_prompt));
  set("bos_token", Value::String(inputs.bos_token));
  set("eos_token", Value::String(inputs.eos_token));
  return RenderDict(std::move(vars), inputs.now);
}

absl::StatusOr<Rendered> Template::RenderVariables(const nlohmann::ordered_json& variables,
                                                   const std::vector<std::string>& user_keys,
                                                   std::optional<std::time_t> now) const {
  if (!variables.is_object()) return absl::InvalidArgumentError("variables must be a JSON object");
  Dict vars;
  for (auto it = variables.begin(); it != variables.end(); ++it) {
    const bool user = std::find(user_keys.begin(), user_keys.end(), it.key()) != user_keys.end();
    auto v = FromJson(it.value(), user, limits_.max_nesting);
    if (!v.ok()) return v.status();
    vars.emplace_back(Text(it.key()), std::move(*v));
  }
  return RenderDict(std::move(vars), now);
}

absl::StatusOr<Rendered> RenderChat(std::string_view source, const ChatInputs& inputs,
                                    const Limits& limits) {
  auto t = Template::Parse(source, limits);
  if (!t.ok()) return t.status();
  return t->Render(inputs);
}

}  // namespace pdserve::jinja
