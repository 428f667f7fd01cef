// Evaluates a parsed template (internal to engine/jinja; users take
// engine/jinja/jinja.h). Every loop, call and string operation is counted
// against Limits so a hostile template ends with an error, not a hang.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/jinja/limits.h"
#include "engine/jinja/parser.h"
#include "engine/jinja/value.h"

namespace pdserve::jinja {

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  SourcePos at;

  // The argument at `index` or named `name`, or nullptr.
  const Value* Get(size_t index, std::string_view name) const {
    if (index < positional.size()) return &positional[index];
    for (const auto& [k, v] : keyword) {
      if (k == name) return &v;
    }
    return nullptr;
  }
};

class Interpreter {
 public:
  Interpreter(const Limits& limits, std::time_t now) : limits_(limits), now_(now) {}
  // Empties every namespace the render made: namespaces are the only mutable
  // containers, so this breaks any reference cycle a template built through
  // them (which would otherwise leak).
  ~Interpreter() {
    for (const Value& ns : namespaces_) ns.dict().clear();
  }
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  // Records a namespace() the template made (see ~Interpreter).
  void TrackNamespace(const Value& ns) { namespaces_.push_back(ns); }

  // Renders `body` with `variables` as the template's globals.
  absl::StatusOr<Text> Run(const Body& body, Dict variables);

  // An error at `pos`, naming line and column.
  absl::Status ErrorAt(SourcePos pos, std::string_view message) const;
  // Counts `bytes` of newly built string against the limits.
  absl::Status Charge(SourcePos pos, size_t bytes);
  // Counts one loop iteration.
  absl::Status CountIteration(SourcePos pos);
  absl::StatusOr<Value> CallValue(const Value& fn, CallArgs& args);
  const Limits& limits() const { return limits_; }
  std::time_t now() const { return now_; }

 private:
  using Frame = absl::flat_hash_map<std::string, Value>;
  enum class Flow { kNormal, kBreak, kContinue };

  absl::StatusOr<Flow> ExecBody(const Body& body, Text* out);
  absl::StatusOr<Flow> Exec(const Stmt& s, Text* out);
  absl::StatusOr<Flow> ExecFor(const Stmt& s, Text* out);
  absl::Status ExecSet(const Stmt& s);
  absl::Status AppendOutput(SourcePos pos, const Text& t, Text* out);
  absl::StatusOr<Value> Eval(const Expr& e);
  absl::StatusOr<Value> EvalCall(const Expr& e, const Value* caller);
  absl::StatusOr<Value> EvalFilter(const Expr& e, const Value* input);
  absl::StatusOr<Value> EvalBinary(const Expr& e, const Value& a, const Value& b);
  absl::StatusOr<bool> Compare(SourcePos pos, const std::string& op, const Value& a,
                               const Value& b);
  absl::Status EvalArgs(const Expr& e, size_t first, CallArgs* args);
  absl::Status Assign(SourcePos pos, const std::vector<std::string>& targets, const Value& v);
  Value Lookup(const std::string& name) const;
  Value MakeMacro(const Stmt& s);
  absl::Status Step(SourcePos pos);
  absl::Status Undefined(SourcePos pos, const Value& v) const;

  const Limits& limits_;
  std::time_t now_;
  std::vector<Frame> frames_;  // frames_[0]: globals and top-level sets
  std::vector<Value> namespaces_;
  int64_t steps_ = 0;
  int64_t iterations_ = 0;
  int64_t work_bytes_ = 0;
  int call_depth_ = 0;
  int eval_depth_ = 0;
};

// Filters, tests and methods (builtins.cc).
bool IsKnownFilter(std::string_view name);
bool IsKnownTest(std::string_view name);
absl::StatusOr<Value> ApplyFilter(Interpreter& in, const std::string& name, const Value& v,
                                  CallArgs& args);
absl::StatusOr<bool> ApplyTest(Interpreter& in, const std::string& name, const Value& v,
                               CallArgs& args);
// obj.name(args) for str, list and dict methods; *found = false when `name`
// is not a method of obj.
absl::StatusOr<Value> CallMethod(Interpreter& in, const Value& obj, const std::string& name,
                                 CallArgs& args, bool* found);
// HTML escaping of jinja2's escape filter and Markup.
Text HtmlEscape(const Text& t);
// range, namespace, raise_exception, strftime_now, dict.
void AddGlobals(Dict* globals);

}  // namespace pdserve::jinja
