#include "engine/jinja/interpreter.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace pdserve::jinja {
namespace {

// Python's a // b and a % b for integers.
int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

}  // namespace

absl::Status Interpreter::ErrorAt(SourcePos pos, std::string_view message) const {
  return absl::InvalidArgumentError(absl::StrCat("template error at line ", pos.line, ", column ",
                                                 pos.column, ": ", std::string(message)));
}

absl::Status Interpreter::Step(SourcePos pos) {
  if (++steps_ > limits_.max_steps) {
    return ErrorAt(pos, absl::StrCat("template exceeded ", limits_.max_steps, " steps"));
  }
  return absl::OkStatus();
}

absl::Status Interpreter::Charge(SourcePos pos, size_t bytes) {
  if (bytes > limits_.max_output_bytes) {
    return ErrorAt(pos, absl::StrCat("a string or list of the template exceeded ",
                                     limits_.max_output_bytes, " bytes"));
  }
  work_bytes_ += static_cast<int64_t>(bytes);
  if (work_bytes_ > limits_.max_work_bytes) {
    return ErrorAt(pos, absl::StrCat("template built more than ", limits_.max_work_bytes,
                                     " bytes of strings"));
  }
  return absl::OkStatus();
}

absl::Status Interpreter::CountIteration(SourcePos pos) {
  if (++iterations_ > limits_.max_loop_iterations) {
    return ErrorAt(
        pos, absl::StrCat("template exceeded ", limits_.max_loop_iterations, " loop iterations"));
  }
  return absl::OkStatus();
}

absl::Status Interpreter::Undefined(SourcePos pos, const Value& v) const {
  if (v.name().empty()) return ErrorAt(pos, "value is undefined");
  return ErrorAt(pos, absl::StrCat("'", v.name(), "' is undefined"));
}

absl::StatusOr<Text> Interpreter::Run(const Body& body, Dict variables) {
  frames_.clear();
  frames_.emplace_back();
  AddGlobals(&variables);
  for (auto& [k, v] : variables) frames_[0][k.s] = std::move(v);
  Text out;
  auto flow = ExecBody(body, &out);
  frames_.clear();
  if (!flow.ok()) return flow.status();
  return out;
}

Value Interpreter::Lookup(const std::string& name) const {
  for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
    auto f = it->find(name);
    if (f != it->end()) return f->second;
  }
  return Value::Undefined(name);
}

absl::Status Interpreter::AppendOutput(SourcePos pos, const Text& t, Text* out) {
  if (out->s.size() + t.s.size() > limits_.max_output_bytes) {
    return ErrorAt(pos,
                   absl::StrCat("template output exceeded ", limits_.max_output_bytes, " bytes"));
  }
  if (auto st = Charge(pos, t.s.size()); !st.ok()) return st;
  out->Append(t);
  return absl::OkStatus();
}

absl::StatusOr<Interpreter::Flow> Interpreter::ExecBody(const Body& body, Text* out) {
  for (const auto& s : body) {
    auto flow = Exec(*s, out);
    if (!flow.ok() || *flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

absl::Status Interpreter::Assign(SourcePos pos, const std::vector<std::string>& targets,
                                 const Value& v) {
  if (targets.size() == 1) {
    frames_.back()[targets[0]] = v;
    return absl::OkStatus();
  }
  std::vector<Value> items;
  if (v.is_list()) {
    items = v.list();
  } else if (v.is_string()) {
    const auto offs = CodePointOffsets(v.str());
    for (size_t i = 0; i + 1 < offs.size(); ++i) {
      items.push_back(Value::String(v.text().Slice(offs[i], offs[i + 1])));
    }
  } else {
    return ErrorAt(pos, absl::StrCat("cannot unpack a value of type ", TypeName(v)));
  }
  if (items.size() != targets.size()) {
    return ErrorAt(pos, absl::StrCat("cannot unpack ", items.size(), " values into ",
                                     targets.size(), " names"));
  }
  for (size_t i = 0; i < targets.size(); ++i) frames_.back()[targets[i]] = items[i];
  return absl::OkStatus();
}

absl::StatusOr<Interpreter::Flow> Interpreter::Exec(const Stmt& s, Text* out) {
  if (auto st = Step(s.pos); !st.ok()) return st;
  switch (s.kind) {
    case StmtKind::kText:
      if (auto st = AppendOutput(s.pos, Text(s.text), out); !st.ok()) return st;
      return Flow::kNormal;
    case StmtKind::kOutput: {
      auto v = Eval(*s.expr);
      if (!v.ok()) return v.status();
      if (auto st = AppendOutput(s.pos, ToText(*v), out); !st.ok()) return st;
      return Flow::kNormal;
    }
    case StmtKind::kIf: {
      auto c = Eval(*s.expr);
      if (!c.ok()) return c.status();
      return ExecBody(c->Truthy() ? s.body : s.else_body, out);
    }
    case StmtKind::kFor:
      return ExecFor(s, out);
    case StmtKind::kSet:
      if (auto st = ExecSet(s); !st.ok()) return st;
      return Flow::kNormal;
    case StmtKind::kSetBlock: {
      Text captured;
      auto flow = ExecBody(s.body, &captured);
      if (!flow.ok()) return flow.status();
      Value v = Value::String(std::move(captured));
      if (s.filter) {
        auto f = EvalFilter(*s.filter, &v);
        if (!f.ok()) return f.status();
        v = std::move(*f);
      }
      frames_.back()[s.targets[0]] = std::move(v);
      return Flow::kNormal;
    }
    case StmtKind::kMacro:
      frames_.back()[s.text] = MakeMacro(s);
      return Flow::kNormal;
    case StmtKind::kCallBlock: {
      // caller() renders the block body in the scope of the call site.
      std::vector<Frame> site(frames_.begin() + 1, frames_.end());
      const Stmt* block = &s;
      Value caller = Value::Callable(
          "caller", [block, site](Interpreter& in, CallArgs& args) -> absl::StatusOr<Value> {
            std::vector<Frame> saved(in.frames_.begin() + 1, in.frames_.end());
            in.frames_.resize(1);
            for (const Frame& f : site) in.frames_.push_back(f);
            in.frames_.emplace_back();
            for (size_t i = 0; i < block->targets.size(); ++i) {
              const Value* a = args.Get(i, block->targets[i]);
              in.frames_.back()[block->targets[i]] = a ? *a : Value::Undefined(block->targets[i]);
            }
            Text body;
            auto flow = in.ExecBody(block->body, &body);
            in.frames_.resize(1);
            for (Frame& f : saved) in.frames_.push_back(std::move(f));
            if (!flow.ok()) return flow.status();
            return Value::String(std::move(body));
          });
      auto v = EvalCall(*s.expr, &caller);
      if (!v.ok()) return v.status();
      if (auto st = AppendOutput(s.pos, ToText(*v), out); !st.ok()) return st;
      return Flow::kNormal;
    }
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
    case StmtKind::kFilterBlock: {
      Text captured;
      auto flow = ExecBody(s.body, &captured);
      if (!flow.ok()) return flow.status();
      Value v = Value::String(std::move(captured));
      auto f = EvalFilter(*s.expr, &v);
      if (!f.ok()) return f.status();
      if (auto st = AppendOutput(s.pos, ToText(*f), out); !st.ok()) return st;
      return Flow::kNormal;
    }
    case StmtKind::kScope:
      return ExecBody(s.body, out);
  }
  return Flow::kNormal;
}

absl::Status Interpreter::ExecSet(const Stmt& s) {
  auto v = Eval(*s.expr);
  if (!v.ok()) return v.status();
  if (s.set_attr) {
    Value ns = Lookup(s.targets[0]);
    if (!ns.is_namespace()) {
      return ErrorAt(s.pos, absl::StrCat("cannot assign attribute on non-namespace object '",
                                         s.targets[0], "'"));
    }
    ns.Set(Text(s.text), std::move(*v));
    return absl::OkStatus();
  }
  return Assign(s.pos, s.targets, *v);
}

absl::StatusOr<Interpreter::Flow> Interpreter::ExecFor(const Stmt& s, Text* out) {
  auto iter = Eval(*s.expr);
  if (!iter.ok()) return iter.status();
  std::vector<Value> items;
  if (iter->is_list()) {
    items = iter->list();
  } else if (iter->is_dict()) {
    for (const auto& [k, v] : iter->dict()) items.push_back(Value::String(k));
  } else if (iter->is_string()) {
    const auto offs = CodePointOffsets(iter->str());
    for (size_t i = 0; i + 1 < offs.size(); ++i) {
      items.push_back(Value::String(iter->text().Slice(offs[i], offs[i + 1])));
    }
  } else if (!iter->is_undefined()) {
    return ErrorAt(s.expr->pos, absl::StrCat("'", TypeName(*iter), "' object is not iterable"));
  }
  if (s.filter) {
    std::vector<Value> kept;
    for (const Value& item : items) {
      if (auto st = CountIteration(s.pos); !st.ok()) return st;
      frames_.emplace_back();
      absl::Status st = Assign(s.pos, s.targets, item);
      absl::StatusOr<Value> keep = st.ok() ? Eval(*s.filter) : absl::StatusOr<Value>(st);
      frames_.pop_back();
      if (!keep.ok()) return keep.status();
      if (keep->Truthy()) kept.push_back(item);
    }
    items = std::move(kept);
  }
  if (items.empty()) return ExecBody(s.else_body, out);
  const size_t n = items.size();
  for (size_t i = 0; i < n; ++i) {
    if (auto st = CountIteration(s.pos); !st.ok()) return st;
    Dict loop;
    const auto n64 = static_cast<int64_t>(n), i64 = static_cast<int64_t>(i);
    loop.emplace_back(Text("index"), Value::Int(i64 + 1));
    loop.emplace_back(Text("index0"), Value::Int(i64));
    loop.emplace_back(Text("revindex"), Value::Int(n64 - i64));
    loop.emplace_back(Text("revindex0"), Value::Int(n64 - i64 - 1));
    loop.emplace_back(Text("first"), Value::Bool(i == 0));
    loop.emplace_back(Text("last"), Value::Bool(i + 1 == n));
    loop.emplace_back(Text("length"), Value::Int(n64));
    loop.emplace_back(Text("depth"), Value::Int(1));
    loop.emplace_back(Text("depth0"), Value::Int(0));
    loop.emplace_back(Text("previtem"), i > 0 ? items[i - 1] : Value::Undefined("previtem"));
    loop.emplace_back(Text("nextitem"), i + 1 < n ? items[i + 1] : Value::Undefined("nextitem"));
    loop.emplace_back(
        Text("cycle"),
        Value::Callable("cycle", [i](Interpreter& in, CallArgs& a) -> absl::StatusOr<Value> {
          if (a.positional.empty()) return in.ErrorAt(a.at, "loop.cycle needs arguments");
          return a.positional[i % a.positional.size()];
        }));
    frames_.emplace_back();
    frames_.back()["loop"] = Value::MakeDict(std::move(loop));
    absl::Status st = Assign(s.pos, s.targets, items[i]);
    absl::StatusOr<Flow> flow = st.ok() ? ExecBody(s.body, out) : absl::StatusOr<Flow>(st);
    frames_.pop_back();
    if (!flow.ok()) return flow.status();
    if (*flow == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

Value Interpreter::MakeMacro(const Stmt& s) {
  const Stmt* macro = &s;
  std::vector<Frame> closure(frames_.begin() + 1, frames_.end());
  return Value::Callable(
      s.text, [macro, closure](Interpreter& in, CallArgs& args) -> absl::StatusOr<Value> {
        if (in.call_depth_ >= in.limits_.max_call_depth) {
          return in.ErrorAt(
              args.at, absl::StrCat("maximum recursion depth (", in.limits_.max_call_depth,
                                    " nested macro calls) exceeded in macro '", macro->text, "'"));
        }
        if (args.positional.size() > macro->targets.size()) {
          return in.ErrorAt(args.at, absl::StrCat("macro '", macro->text, "' takes not more than ",
                                                  macro->targets.size(), " argument(s)"));
        }
        Frame frame;
        Value caller;
        bool has_caller = false;
        for (const auto& [k, v] : args.keyword) {
          if (k == "caller") {
            caller = v;
            has_caller = true;
            continue;
          }
          bool known = false;
          for (const std::string& t : macro->targets) known = known || t == k;
          if (!known) {
            return in.ErrorAt(args.at, absl::StrCat("macro '", macro->text,
                                                    "' takes no keyword argument '", k, "'"));
          }
        }
        std::vector<Frame> saved(in.frames_.begin() + 1, in.frames_.end());
        in.frames_.resize(1);
        for (const Frame& f : closure) in.frames_.push_back(f);
        in.frames_.emplace_back();
        if (has_caller) in.frames_.back()["caller"] = caller;
        absl::Status st;
        for (size_t i = 0; i < macro->targets.size() && st.ok(); ++i) {
          const Value* a = args.Get(i, macro->targets[i]);
          if (a != nullptr) {
            in.frames_.back()[macro->targets[i]] = *a;
          } else if (macro->defaults[i]) {
            auto d = in.Eval(*macro->defaults[i]);
            if (d.ok()) {
              in.frames_.back()[macro->targets[i]] = *d;
            } else {
              st = d.status();
            }
          } else {
            in.frames_.back()[macro->targets[i]] = Value::Undefined(macro->targets[i]);
          }
        }
        Text body;
        ++in.call_depth_;
        absl::StatusOr<Flow> flow = st.ok() ? in.ExecBody(macro->body, &body) : st;
        --in.call_depth_;
        in.frames_.resize(1);
        for (Frame& f : saved) in.frames_.push_back(std::move(f));
        if (!flow.ok()) return flow.status();
        return Value::String(std::move(body));
      });
}

absl::StatusOr<Value> Interpreter::CallValue(const Value& fn, CallArgs& args) {
  if (!fn.is_callable()) {
    if (fn.is_undefined()) return Undefined(args.at, fn);
    return ErrorAt(args.at, absl::StrCat("'", TypeName(fn), "' object is not callable"));
  }
  return fn.fn()(*this, args);
}

absl::Status Interpreter::EvalArgs(const Expr& e, size_t first, CallArgs* args) {
  args->at = e.pos;
  for (size_t i = first; i < e.args.size(); ++i) {
    auto v = Eval(*e.args[i]);
    if (!v.ok()) return v.status();
    args->positional.push_back(std::move(*v));
  }
  for (const auto& [k, x] : e.kwargs) {
    auto v = Eval(*x);
    if (!v.ok()) return v.status();
    args->keyword.emplace_back(k, std::move(*v));
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> Interpreter::EvalCall(const Expr& e, const Value* caller) {
  CallArgs args;
  const Expr& callee = *e.args[0];
  if (callee.kind == ExprKind::kGetAttr) {
    auto obj = Eval(*callee.args[0]);
    if (!obj.ok()) return obj.status();
    if (obj->is_undefined()) return Undefined(callee.pos, *obj);
    if (auto st = EvalArgs(e, 1, &args); !st.ok()) return st;
    if (!obj->is_namespace()) {
      bool found = false;
      auto r = CallMethod(*this, *obj, callee.name, args, &found);
      if (found) return r;
    }
    const Value* member = obj->Find(callee.name);
    if (member == nullptr) {
      return ErrorAt(callee.pos, absl::StrCat("'", TypeName(*obj), "' object has no attribute '",
                                              callee.name, "'"));
    }
    if (caller) args.keyword.emplace_back("caller", *caller);
    return CallValue(*member, args);
  }
  auto fn = Eval(callee);
  if (!fn.ok()) return fn.status();
  if (auto st = EvalArgs(e, 1, &args); !st.ok()) return st;
  if (caller) args.keyword.emplace_back("caller", *caller);
  return CallValue(*fn, args);
}

absl::StatusOr<Value> Interpreter::EvalFilter(const Expr& e, const Value* input) {
  Value v;
  if (e.args[0]) {
    auto in =
        e.args[0]->kind == ExprKind::kFilter ? EvalFilter(*e.args[0], input) : Eval(*e.args[0]);
    if (!in.ok()) return in.status();
    v = std::move(*in);
  } else if (input != nullptr) {
    v = *input;
  }
  CallArgs args;
  if (auto st = EvalArgs(e, 1, &args); !st.ok()) return st;
  return ApplyFilter(*this, e.name, v, args);
}

absl::StatusOr<bool> Interpreter::Compare(SourcePos pos, const std::string& op, const Value& a,
                                          const Value& b) {
  if (op == "==") return Equal(a, b);
  if (op == "!=") return !Equal(a, b);
  if (op == "in" || op == "notin") {
    bool found = false;
    if (b.is_string()) {
      if (!a.is_string()) {
        return ErrorAt(
            pos, absl::StrCat("'in <string>' requires string as left operand, not ", TypeName(a)));
      }
      found = b.str().find(a.str()) != std::string::npos;
    } else if (b.is_list()) {
      for (const Value& x : b.list()) found = found || Equal(a, x);
    } else if (b.is_dict()) {
      found = a.is_string() && b.Find(a.str()) != nullptr;
    } else if (b.is_undefined()) {
      found = false;  // jinja2's Undefined iterates as empty
    } else {
      return ErrorAt(pos, absl::StrCat("argument of type '", TypeName(b), "' is not iterable"));
    }
    return op == "in" ? found : !found;
  }
  int c;
  if (a.is_number() && b.is_number()) {
    const double x = a.as_number(), y = b.as_number();
    if (a.is_float() || b.is_float()) {
      c = x < y ? -1 : x > y ? 1 : 0;
    } else {
      c = a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
    }
  } else if (a.is_string() && b.is_string()) {
    c = a.str().compare(b.str());
  } else {
    if (a.is_undefined()) return Undefined(pos, a);
    if (b.is_undefined()) return Undefined(pos, b);
    return ErrorAt(pos, absl::StrCat("'", op, "' not supported between instances of '", TypeName(a),
                                     "' and '", TypeName(b), "'"));
  }
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

absl::StatusOr<Value> Interpreter::EvalBinary(const Expr& e, const Value& a, const Value& b) {
  const std::string& op = e.name;
  if (op == "~") {
    Text t = ToText(a);
    t.Append(ToText(b));
    if (auto st = Charge(e.pos, t.s.size()); !st.ok()) return st;
    return Value::String(std::move(t));
  }
  if (a.is_undefined()) return Undefined(e.pos, a);
  if (b.is_undefined()) return Undefined(e.pos, b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      const bool markup = a.is_markup() || b.is_markup();
      Text t = markup && !a.is_markup() ? HtmlEscape(a.text()) : a.text();
      t.Append(markup && !b.is_markup() ? HtmlEscape(b.text()) : b.text());
      if (auto st = Charge(e.pos, t.s.size()); !st.ok()) return st;
      Value r = Value::String(std::move(t));
      return markup ? r.AsMarkup() : r;
    }
    if (a.is_list() && b.is_list()) {
      List l = a.list();
      l.insert(l.end(), b.list().begin(), b.list().end());
      if (auto st = Charge(e.pos, l.size()); !st.ok()) return st;
      return Value::MakeList(std::move(l));
    }
  }
  if (op == "*" && (((a.is_string() || a.is_list()) && b.is_int()) ||
                    ((b.is_string() || b.is_list()) && a.is_int()))) {
    const Value& seq = a.is_int() ? b : a;
    const int64_t n = std::max<int64_t>(0, a.is_int() ? a.as_int() : b.as_int());
    const size_t unit = seq.is_string() ? seq.str().size() : seq.list().size();
    if (unit != 0 && static_cast<uint64_t>(n) > limits_.max_output_bytes / unit) {
      return Charge(e.pos, limits_.max_output_bytes + 1);
    }
    if (seq.is_string()) {
      Text t;
      for (int64_t i = 0; i < n; ++i) t.Append(seq.text());
      if (auto st = Charge(e.pos, t.s.size()); !st.ok()) return st;
      return Value::String(std::move(t));
    }
    List l;
    for (int64_t i = 0; i < n; ++i) l.insert(l.end(), seq.list().begin(), seq.list().end());
    return Value::MakeList(std::move(l));
  }
  if (!a.is_number() || !b.is_number()) {
    return ErrorAt(e.pos, absl::StrCat("unsupported operand type(s) for ", op, ": '", TypeName(a),
                                       "' and '", TypeName(b), "'"));
  }
  const bool floats = a.is_float() || b.is_float();
  if (op == "/") {
    if (b.as_number() == 0) return ErrorAt(e.pos, "division by zero");
    return Value::Float(a.as_number() / b.as_number());
  }
  if (floats) {
    const double x = a.as_number(), y = b.as_number();
    if (op == "+") return Value::Float(x + y);
    if (op == "-") return Value::Float(x - y);
    if (op == "*") return Value::Float(x * y);
    if (op == "**") return Value::Float(std::pow(x, y));
    if (y == 0) return ErrorAt(e.pos, "division by zero");
    if (op == "//") return Value::Float(std::floor(x / y));
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    return Value::Float(m);
  }
  const int64_t x = a.as_int(), y = b.as_int();
  int64_t r = 0;
  bool overflow = false;
  if (op == "+") {
    overflow = __builtin_add_overflow(x, y, &r);
  } else if (op == "-") {
    overflow = __builtin_sub_overflow(x, y, &r);
  } else if (op == "*") {
    overflow = __builtin_mul_overflow(x, y, &r);
  } else if (op == "**") {
    if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
    r = 1;
    for (int64_t i = 0; i < y && !overflow; ++i) overflow = __builtin_mul_overflow(r, x, &r);
  } else {
    if (y == 0) return ErrorAt(e.pos, "integer division or modulo by zero");
    if (x == INT64_MIN && y == -1) {
      overflow = true;
    } else if (op == "//") {
      r = FloorDiv(x, y);
    } else {
      r = x - FloorDiv(x, y) * y;
    }
  }
  if (overflow) return ErrorAt(e.pos, "integer overflow");
  return Value::Int(r);
}

absl::StatusOr<Value> Interpreter::Eval(const Expr& e) {
  if (auto st = Step(e.pos); !st.ok()) return st;
  struct Depth {
    int* d;
    explicit Depth(int* d) : d(d) { ++*d; }
    ~Depth() { --*d; }
  } depth(&eval_depth_);
  if (eval_depth_ > 4 * limits_.max_nesting) {
    return ErrorAt(e.pos, "expression nested too deeply");
  }
  switch (e.kind) {
    case ExprKind::kLiteral:
      return e.literal;
    case ExprKind::kName:
      return Lookup(e.name);
    case ExprKind::kList:
    case ExprKind::kTuple: {
      List l;
      for (const auto& a : e.args) {
        auto v = Eval(*a);
        if (!v.ok()) return v;
        l.push_back(std::move(*v));
      }
      Value list = Value::MakeList(std::move(l));
      if (list.depth() > limits_.max_nesting) {
        return ErrorAt(e.pos,
                       absl::StrCat("a list nested deeper than ", limits_.max_nesting, " levels"));
      }
      return list;
    }
    case ExprKind::kDict: {
      Value d = Value::MakeDict();
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        auto k = Eval(*e.args[i]);
        if (!k.ok()) return k;
        auto v = Eval(*e.args[i + 1]);
        if (!v.ok()) return v;
        // Keys are stored as text; a number key is found by its decimal form.
        if (!k->is_string() && !k->is_number() && !k->is_none()) {
          return ErrorAt(e.args[i]->pos, "dict keys must be strings or numbers");
        }
        if (v->depth() >= limits_.max_nesting) {
          return ErrorAt(
              e.pos, absl::StrCat("a dict nested deeper than ", limits_.max_nesting, " levels"));
        }
        d.Set(ToText(*k), std::move(*v));
      }
      return Value::MakeDict(std::move(d.dict()));
    }
    case ExprKind::kGetAttr:
    case ExprKind::kGetItem: {
      auto obj = Eval(*e.args[0]);
      if (!obj.ok()) return obj;
      if (obj->is_undefined()) return Undefined(e.pos, *obj);
      if (obj->is_generator() && e.kind == ExprKind::kGetItem) {
        return ErrorAt(e.pos, "'generator' object is not subscriptable");
      }
      Value key;
      if (e.kind == ExprKind::kGetAttr) {
        key = Value::String(e.name);
      } else {
        auto k = Eval(*e.args[1]);
        if (!k.ok()) return k;
        key = std::move(*k);
      }
      const std::string shown = key.is_string() ? key.str() : ToText(key).s;
      if (obj->is_dict()) {
        if (key.is_string() || key.is_number()) {
          if (const Value* v = obj->Find(key.is_string() ? key.str() : ToText(key).s)) return *v;
        }
        return Value::Undefined(absl::StrCat(TypeName(*obj), " object has no element ", shown));
      }
      if ((obj->is_list() || obj->is_string()) && key.is_int()) {
        const bool is_str = obj->is_string();
        std::vector<size_t> offs;
        if (is_str) offs = CodePointOffsets(obj->str());
        const int64_t n = is_str ? static_cast<int64_t>(offs.size()) - 1
                                 : static_cast<int64_t>(obj->list().size());
        int64_t i = key.as_int();
        if (i < 0) i += n;
        if (i < 0 || i >= n) {
          return Value::Undefined(absl::StrCat(TypeName(*obj), " object has no element ", shown));
        }
        if (!is_str) return obj->list()[static_cast<size_t>(i)];
        return Value::String(obj->text().Slice(offs[i], offs[i + 1]));
      }
      return Value::Undefined(absl::StrCat(TypeName(*obj), " object has no attribute ", shown));
    }
    case ExprKind::kSlice: {
      auto obj = Eval(*e.args[0]);
      if (!obj.ok()) return obj;
      if (obj->is_undefined()) return Undefined(e.pos, *obj);
      int64_t idx[3] = {0, 0, 1};
      bool given[3] = {false, false, false};
      for (int k = 0; k < 3; ++k) {
        if (!e.args[k + 1]) continue;
        auto v = Eval(*e.args[k + 1]);
        if (!v.ok()) return v;
        if (v->is_none()) continue;
        if (!v->is_int()) return ErrorAt(e.pos, "slice indices must be integers or None");
        idx[k] = v->as_int();
        given[k] = true;
      }
      if (idx[2] == 0) return ErrorAt(e.pos, "slice step cannot be zero");
      const bool is_str = obj->is_string();
      if (!is_str && !obj->is_list()) {
        return ErrorAt(e.pos, absl::StrCat("'", TypeName(*obj), "' object is not subscriptable"));
      }
      std::vector<size_t> offs;
      if (is_str) offs = CodePointOffsets(obj->str());
      const int64_t n =
          is_str ? static_cast<int64_t>(offs.size()) - 1 : static_cast<int64_t>(obj->list().size());
      const int64_t step = idx[2];
      auto clamp = [&](int64_t v, bool is_given, int64_t dflt) {
        if (!is_given) return dflt;
        if (v < 0) v += n;
        if (step > 0) return std::clamp<int64_t>(v, 0, n);
        return std::clamp<int64_t>(v, -1, n - 1);
      };
      const int64_t start = clamp(idx[0], given[0], step > 0 ? 0 : n - 1);
      const int64_t stop = clamp(idx[1], given[1], step > 0 ? n : -1);
      std::vector<int64_t> picks;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) picks.push_back(i);
      if (is_str) {
        Text t;
        for (int64_t i : picks) t.Append(obj->text().Slice(offs[i], offs[i + 1]));
        return Value::String(std::move(t));
      }
      List l;
      for (int64_t i : picks) l.push_back(obj->list()[static_cast<size_t>(i)]);
      return Value::MakeList(std::move(l));
    }
    case ExprKind::kCall:
      return EvalCall(e, nullptr);
    case ExprKind::kFilter:
      return EvalFilter(e, nullptr);
    case ExprKind::kTest: {
      auto v = Eval(*e.args[0]);
      if (!v.ok()) return v;
      CallArgs args;
      if (auto st = EvalArgs(e, 1, &args); !st.ok()) return st;
      auto r = ApplyTest(*this, e.name, *v, args);
      if (!r.ok()) return r.status();
      return Value::Bool(*r != e.negated);
    }
    case ExprKind::kUnary: {
      auto v = Eval(*e.args[0]);
      if (!v.ok()) return v;
      if (e.name == "not") return Value::Bool(!v->Truthy());
      if (v->is_undefined()) return Undefined(e.pos, *v);
      if (!v->is_number()) {
        return ErrorAt(
            e.pos, absl::StrCat("bad operand type for unary ", e.name, ": '", TypeName(*v), "'"));
      }
      if (e.name == "+") return v->is_float() ? *v : Value::Int(v->as_int());
      if (v->is_float()) return Value::Float(-v->as_float());
      if (v->as_int() == INT64_MIN) return ErrorAt(e.pos, "integer overflow");
      return Value::Int(-v->as_int());
    }
    case ExprKind::kBinary: {
      auto a = Eval(*e.args[0]);
      if (!a.ok()) return a;
      auto b = Eval(*e.args[1]);
      if (!b.ok()) return b;
      return EvalBinary(e, *a, *b);
    }
    case ExprKind::kAnd:
    case ExprKind::kOr: {
      auto a = Eval(*e.args[0]);
      if (!a.ok()) return a;
      const bool short_circuit = e.kind == ExprKind::kAnd ? !a->Truthy() : a->Truthy();
      if (short_circuit) return a;
      return Eval(*e.args[1]);
    }
    case ExprKind::kCompare: {
      auto left = Eval(*e.args[0]);
      if (!left.ok()) return left;
      Value l = std::move(*left);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        auto r = Eval(*e.args[i + 1]);
        if (!r.ok()) return r;
        auto c = Compare(e.args[i + 1]->pos, e.ops[i], l, *r);
        if (!c.ok()) return c.status();
        if (!*c) return Value::Bool(false);
        l = std::move(*r);
      }
      return Value::Bool(true);
    }
    case ExprKind::kCondExpr: {
      auto c = Eval(*e.args[1]);
      if (!c.ok()) return c;
      if (c->Truthy()) return Eval(*e.args[0]);
      if (e.args[2]) return Eval(*e.args[2]);
      return Value::Undefined("the else branch of a conditional expression");
    }
  }
  return ErrorAt(e.pos, "unknown expression");
}

}  // namespace pdserve::jinja
