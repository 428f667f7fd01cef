// Filters, tests, str/dict methods and globals of the renderer, with the
// semantics of jinja2 3.x and Python 3 str, and transformers' overrides
// (tojson without HTML escaping, raise_exception, strftime_now).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/jinja/interpreter.h"

namespace pdserve::jinja {
namespace {

constexpr std::string_view kPyWhitespace = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f";

// Python str.strip family: [b, e) of `s` after stripping `chars`.
std::pair<size_t, size_t> StripRange(const std::string& s, std::string_view chars, bool left,
                                     bool right) {
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e && chars.find(s[b]) != std::string_view::npos) ++b;
  }
  if (right) {
    while (e > b && chars.find(s[e - 1]) != std::string_view::npos) --e;
  }
  return {b, e};
}

Text MapAscii(const Text& t, const std::function<char(size_t, char)>& f) {
  Text out = t;
  for (size_t i = 0; i < out.s.size(); ++i) out.s[i] = f(i, out.s[i]);
  return out;
}

char Up(char c) { return static_cast<char>(std::toupper(static_cast<unsigned char>(c))); }
char Low(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }
bool IsAlpha(char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; }

// Python str.title(): a letter after a non-letter is upper-cased.
Text PyTitle(const Text& t) {
  bool prev_cased = false;
  return MapAscii(t, [&](size_t, char c) {
    const char r = prev_cased ? Low(c) : Up(c);
    prev_cased = IsAlpha(c) || (static_cast<unsigned char>(c) >= 0x80 && prev_cased);
    return r;
  });
}

// jinja2's title filter: words start after runs of [-\s({\[<].
Text JinjaTitle(const Text& t) {
  bool word_start = true;
  return MapAscii(t, [&](size_t, char c) {
    const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' ||
                     kPyWhitespace.find(c) != std::string_view::npos;
    char r = c;
    if (!sep) r = word_start ? Up(c) : Low(c);
    word_start = sep;
    return r;
  });
}

Text Capitalize(const Text& t) {
  return MapAscii(t, [](size_t i, char c) { return i == 0 ? Up(c) : Low(c); });
}

// s.replace(old, new, count) keeping provenance; a replacement of user bytes
// counts as user content.
Text Replace(const Text& s, const Text& old, const Text& repl, int64_t count) {
  Text out;
  size_t pos = 0;
  int64_t done = 0;
  if (old.s.empty()) {
    // Python inserts `new` between every character (and at both ends).
    const auto offs = CodePointOffsets(s.s);
    for (size_t i = 0; i + 1 < offs.size() || i == 0; ++i) {
      if (count >= 0 && done >= count) {
        out.Append(s.Slice(offs[i], s.s.size()));
        return out;
      }
      out.Append(repl);
      ++done;
      if (i + 1 >= offs.size()) return out;
      out.Append(s.Slice(offs[i], offs[i + 1]));
      if (i + 2 == offs.size()) {
        if (count < 0 || done < count) out.Append(repl);
        return out;
      }
    }
    return out;
  }
  while (count < 0 || done < count) {
    const size_t at = s.s.find(old.s, pos);
    if (at == std::string::npos) break;
    out.Append(s.Slice(pos, at));
    bool user = false;
    for (size_t k = at; k < at + old.s.size() && !user; ++k) user = s.IsUser(k);
    if (user) {
      out.AppendMarked(repl.s, true);
    } else {
      out.Append(repl);
    }
    pos = at + old.s.size();
    ++done;
  }
  out.Append(s.Slice(pos, s.s.size()));
  return out;
}

// Python str.split(sep, maxsplit); sep null = runs of whitespace.
List Split(const Text& s, const Value* sep, int64_t maxsplit) {
  List out;
  if (sep == nullptr || sep->is_none()) {
    size_t i = 0;
    const size_t n = s.s.size();
    auto ws = [&](size_t k) { return kPyWhitespace.find(s.s[k]) != std::string_view::npos; };
    while (true) {
      while (i < n && ws(i)) ++i;
      if (i >= n) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
        size_t e = n;
        while (e > i && ws(e - 1)) --e;
        out.push_back(Value::String(s.Slice(i, e)));
        break;
      }
      size_t j = i;
      while (j < n && !ws(j)) ++j;
      out.push_back(Value::String(s.Slice(i, j)));
      i = j;
    }
    return out;
  }
  const std::string& d = sep->str();
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    const size_t at = s.s.find(d, pos);
    if (at == std::string::npos) break;
    out.push_back(Value::String(s.Slice(pos, at)));
    pos = at + d.size();
  }
  out.push_back(Value::String(s.Slice(pos, s.s.size())));
  return out;
}

// Attribute lookup for selectattr/map/join(attribute=): dotted path.
Value GetPath(const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t dot = path.find('.', start);
    const std::string part =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur.is_dict()) {
      const Value* f = cur.Find(part);
      cur = f ? *f : Value::Undefined(part);
    } else if (cur.is_list() && !part.empty() &&
               std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(c); })) {
      const size_t i = std::stoul(part);
      cur = i < cur.list().size() ? cur.list()[i] : Value::Undefined(part);
    } else {
      return Value::Undefined(part);
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

absl::StatusOr<std::vector<Value>> Iterate(Interpreter& in, const Value& v, SourcePos at) {
  std::vector<Value> out;
  if (v.is_list()) return v.list();
  if (v.is_dict()) {
    for (const auto& [k, x] : v.dict()) out.push_back(Value::String(k));
    return out;
  }
  if (v.is_string()) {
    const auto offs = CodePointOffsets(v.str());
    for (size_t i = 0; i + 1 < offs.size(); ++i) {
      out.push_back(Value::String(v.text().Slice(offs[i], offs[i + 1])));
    }
    return out;
  }
  if (v.is_undefined()) return out;
  return in.ErrorAt(at, absl::StrCat("'", TypeName(v), "' object is not iterable"));
}

Value Items(const Value& v) {
  List items;
  for (const auto& [k, x] : v.dict()) items.push_back(Value::MakeList({Value::String(k), x}));
  return Value::MakeList(std::move(items));
}

const absl::flat_hash_set<std::string_view>& Filters() {
  static const auto* kFilters = new absl::flat_hash_set<std::string_view>{
      "trim",    "upper",      "lower",  "length", "count",  "default",    "d",
      "tojson",  "string",     "int",    "float",  "join",   "first",      "last",
      "replace", "capitalize", "title",  "items",  "list",   "selectattr", "rejectattr",
      "map",     "safe",       "escape", "e",      "unique", "reverse",    "abs",
      "round",   "indent",     "sum",    "min",    "max",    "dictsort",   "wordcount",
      "select",  "reject",     "sort",   "batch",  "center", "striptags"};
  return *kFilters;
}

const absl::flat_hash_set<std::string_view>& Tests() {
  static const auto* kTests = new absl::flat_hash_set<std::string_view>{
      "defined", "undefined", "none",    "string", "mapping", "iterable", "sequence",    "number",
      "integer", "float",     "boolean", "true",   "false",   "callable", "eq",          "equalto",
      "==",      "ne",        "!=",      "lt",     "<",       "le",       "<=",          "gt",
      ">",       "ge",        ">=",      "in",     "odd",     "even",     "divisibleby", "lower",
      "upper",   "sameas",    "escaped", "filter", "test"};
  return *kTests;
}

absl::StatusOr<bool> TestValue(Interpreter& in, const std::string& name, const Value& v,
                               CallArgs& args);

// select/reject/selectattr/rejectattr.
absl::StatusOr<Value> Select(Interpreter& in, const Value& seq, CallArgs& args, bool by_attr,
                             bool keep_if) {
  auto items = Iterate(in, seq, args.at);
  if (!items.ok()) return items.status();
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    if (args.positional.empty() || !args.positional[0].is_string()) {
      return in.ErrorAt(args.at, "selectattr/rejectattr need an attribute name");
    }
    attr = args.positional[0].str();
    next = 1;
  }
  std::string test;
  CallArgs test_args;
  test_args.at = args.at;
  if (next < args.positional.size()) {
    if (!args.positional[next].is_string())
      return in.ErrorAt(args.at, "test name must be a string");
    test = args.positional[next].str();
    if (!IsKnownTest(test)) return in.ErrorAt(args.at, absl::StrCat("no test named '", test, "'"));
    test_args.positional.assign(args.positional.begin() + next + 1, args.positional.end());
  }
  List out;
  for (const Value& item : *items) {
    if (auto st = in.CountIteration(args.at); !st.ok()) return st;
    const Value subject = by_attr ? GetPath(item, attr) : item;
    bool ok;
    if (test.empty()) {
      ok = subject.Truthy();
    } else {
      auto r = TestValue(in, test, subject, test_args);
      if (!r.ok()) return r.status();
      ok = *r;
    }
    if (ok == keep_if) out.push_back(item);
  }
  return Value::MakeList(std::move(out));
}

absl::StatusOr<bool> TestValue(Interpreter& in, const std::string& name, const Value& v,
                               CallArgs& args) {
  const Value* arg = args.Get(0, "value");
  auto need = [&]() -> absl::Status {
    if (arg == nullptr)
      return in.ErrorAt(args.at, absl::StrCat("test '", name, "' needs an argument"));
    return absl::OkStatus();
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "callable") return v.is_callable();
  if (name == "escaped") return false;
  if (name == "lower" || name == "upper") {
    if (!v.is_string()) return false;
    bool cased = false;
    for (char c : v.str()) {
      if (!IsAlpha(c)) continue;
      cased = true;
      if (name == "lower" ? std::isupper(static_cast<unsigned char>(c))
                          : std::islower(static_cast<unsigned char>(c))) {
        return false;
      }
    }
    return cased;
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.is_int() && !v.is_bool()) {
      return in.ErrorAt(args.at, absl::StrCat("test '", name, "' needs an integer"));
    }
    if (name == "odd") return (v.as_int() % 2) != 0;
    if (name == "even") return (v.as_int() % 2) == 0;
    if (auto st = need(); !st.ok()) return st;
    if (!arg->is_int() || arg->as_int() == 0)
      return in.ErrorAt(args.at, "divisibleby needs a non-zero integer");
    return (v.as_int() % arg->as_int()) == 0;
  }
  if (auto st = need(); !st.ok()) return st;
  if (name == "eq" || name == "equalto" || name == "==") return Equal(v, *arg);
  if (name == "ne" || name == "!=") return !Equal(v, *arg);
  if (name == "sameas") {
    if (v.kind() != arg->kind()) return false;
    if (v.is_none() || v.is_bool()) return Equal(v, *arg);
    return Equal(v, *arg);
  }
  if (name == "in") {
    if (arg->is_string()) return v.is_string() && arg->str().find(v.str()) != std::string::npos;
    if (arg->is_list()) {
      for (const Value& x : arg->list()) {
        if (Equal(v, x)) return true;
      }
      return false;
    }
    if (arg->is_dict()) return v.is_string() && arg->Find(v.str()) != nullptr;
    return in.ErrorAt(args.at, "test 'in' needs a container");
  }
  // lt, le, gt, ge
  int c;
  if (v.is_number() && arg->is_number()) {
    c = v.as_number() < arg->as_number() ? -1 : v.as_number() > arg->as_number() ? 1 : 0;
  } else if (v.is_string() && arg->is_string()) {
    c = v.str().compare(arg->str());
  } else {
    return in.ErrorAt(
        args.at, absl::StrCat("cannot compare '", TypeName(v), "' and '", TypeName(*arg), "'"));
  }
  if (name == "lt" || name == "<") return c < 0;
  if (name == "le" || name == "<=") return c <= 0;
  if (name == "gt" || name == ">") return c > 0;
  if (name == "ge" || name == ">=") return c >= 0;
  return in.ErrorAt(args.at, absl::StrCat("no test named '", name, "'"));
}

absl::StatusOr<Value> StrMethod(Interpreter& in, const Value& obj, const std::string& name,
                                CallArgs& args, bool* found) {
  const Text& t = obj.text();
  const Value* a0 = args.Get(0, "");
  *found = true;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    std::string_view chars = kPyWhitespace;
    if (a0 && a0->is_string()) chars = a0->str();
    auto [b, e] = StripRange(t.s, chars, name != "rstrip", name != "lstrip");
    return Value::String(t.Slice(b, e));
  }
  if (name == "upper") return Value::String(MapAscii(t, [](size_t, char c) { return Up(c); }));
  if (name == "lower") return Value::String(MapAscii(t, [](size_t, char c) { return Low(c); }));
  if (name == "title") return Value::String(PyTitle(t));
  if (name == "capitalize") return Value::String(Capitalize(t));
  if (name == "startswith" || name == "endswith") {
    if (!a0) return in.ErrorAt(args.at, absl::StrCat(name, "() needs an argument"));
    std::vector<std::string> options;
    if (a0->is_string()) {
      options.push_back(a0->str());
    } else if (a0->is_list()) {
      for (const Value& x : a0->list()) {
        if (x.is_string()) options.push_back(x.str());
      }
    } else {
      return in.ErrorAt(args.at, absl::StrCat(name, "() needs a string or a tuple of strings"));
    }
    for (const std::string& o : options) {
      const bool hit =
          name == "startswith"
              ? t.s.compare(0, o.size(), o) == 0
              : t.s.size() >= o.size() && t.s.compare(t.s.size() - o.size(), o.size(), o) == 0;
      if (hit) return Value::Bool(true);
    }
    return Value::Bool(false);
  }
  if (name == "split" || name == "rsplit") {
    const Value* sep = args.Get(0, "sep");
    const Value* maxsplit = args.Get(1, "maxsplit");
    if (sep && sep->is_string() && sep->str().empty())
      return in.ErrorAt(args.at, "empty separator");
    if (sep && !sep->is_string() && !sep->is_none())
      return in.ErrorAt(args.at, "split separator must be a string");
    int64_t max = maxsplit && maxsplit->is_int() ? maxsplit->as_int() : -1;
    if (name == "rsplit" && max >= 0) {
      // rsplit with a limit: split fully, then rejoin the leading parts.
      List all = Split(t, sep, -1);
      if (static_cast<int64_t>(all.size()) <= max + 1) return Value::MakeList(std::move(all));
      return in.ErrorAt(args.at, "rsplit with maxsplit is not supported");
    }
    return Value::MakeList(Split(t, sep, max));
  }
  if (name == "replace") {
    const Value* old = args.Get(0, "old");
    const Value* repl = args.Get(1, "new");
    const Value* count = args.Get(2, "count");
    if (!old || !repl || !old->is_string() || !repl->is_string()) {
      return in.ErrorAt(args.at, "replace() needs two strings");
    }
    Text r = Replace(t, old->text(), repl->text(), count && count->is_int() ? count->as_int() : -1);
    if (auto st = in.Charge(args.at, r.s.size()); !st.ok()) return st;
    return Value::String(std::move(r));
  }
  if (name == "find" || name == "rfind" || name == "count") {
    if (!a0 || !a0->is_string())
      return in.ErrorAt(args.at, absl::StrCat(name, "() needs a string"));
    if (name == "count") {
      int64_t n = 0;
      if (a0->str().empty()) return Value::Int(static_cast<int64_t>(CodePointCount(t.s)) + 1);
      for (size_t p = t.s.find(a0->str()); p != std::string::npos;
           p = t.s.find(a0->str(), p + a0->str().size())) {
        ++n;
      }
      return Value::Int(n);
    }
    const size_t p = name == "find" ? t.s.find(a0->str()) : t.s.rfind(a0->str());
    if (p == std::string::npos) return Value::Int(-1);
    return Value::Int(static_cast<int64_t>(CodePointCount(std::string_view(t.s).substr(0, p))));
  }
  if (name == "join") {
    if (!a0) return in.ErrorAt(args.at, "join() needs an argument");
    auto items = Iterate(in, *a0, args.at);
    if (!items.ok()) return items.status();
    Text out;
    for (size_t i = 0; i < items->size(); ++i) {
      if (!(*items)[i].is_string()) return in.ErrorAt(args.at, "join() needs strings");
      if (i > 0) out.Append(t);
      out.Append((*items)[i].text());
    }
    if (auto st = in.Charge(args.at, out.s.size()); !st.ok()) return st;
    return Value::String(std::move(out));
  }
  if (name == "format") {
    // str.format with {}, {N} and {name} fields (no format specs).
    Text out;
    size_t auto_index = 0;
    bool manual_numbering = false;
    for (size_t i = 0; i < t.s.size(); ++i) {
      const char c = t.s[i];
      if ((c == '{' || c == '}') && i + 1 < t.s.size() && t.s[i + 1] == c) {
        out.Append(t.Slice(i, i + 1));
        ++i;
        continue;
      }
      if (c == '}') return in.ErrorAt(args.at, "format(): single '}' in format string");
      if (c != '{') {
        out.Append(t.Slice(i, i + 1));
        continue;
      }
      const size_t close = t.s.find('}', i);
      if (close == std::string::npos) return in.ErrorAt(args.at, "format(): unclosed '{'");
      const std::string field = t.s.substr(i + 1, close - i - 1);
      const Value* v = nullptr;
      const bool numbered = !field.empty() && std::isdigit(static_cast<unsigned char>(field[0]));
      if (field.empty() ? manual_numbering : (numbered && auto_index > 0)) {
        return in.ErrorAt(args.at, "format(): cannot mix automatic and manual field numbering");
      }
      manual_numbering = manual_numbering || numbered;
      if (field.empty()) {
        v = auto_index < args.positional.size() ? &args.positional[auto_index] : nullptr;
        ++auto_index;
      } else if (std::all_of(field.begin(), field.end(),
                             [](char d) { return std::isdigit(static_cast<unsigned char>(d)); })) {
        const size_t k = field.size() > 6 ? SIZE_MAX : std::stoul(field);
        v = k < args.positional.size() ? &args.positional[k] : nullptr;
      } else {
        for (const auto& [key, x] : args.keyword) {
          if (key == field) v = &x;
        }
      }
      if (v == nullptr) {
        return in.ErrorAt(args.at, absl::StrCat("format(): no argument for field '{", field, "}'"));
      }
      out.Append(ToText(*v));
      i = close;
    }
    if (auto st = in.Charge(args.at, out.s.size()); !st.ok()) return st;
    return Value::String(std::move(out));
  }
  if (name == "splitlines") {
    List out;
    size_t start = 0;
    for (size_t i = 0; i < t.s.size(); ++i) {
      if (t.s[i] == '\n' || t.s[i] == '\r') {
        out.push_back(Value::String(t.Slice(start, i)));
        if (t.s[i] == '\r' && i + 1 < t.s.size() && t.s[i + 1] == '\n') ++i;
        start = i + 1;
      }
    }
    if (start < t.s.size()) out.push_back(Value::String(t.Slice(start, t.s.size())));
    return Value::MakeList(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace") {
    if (t.s.empty()) return Value::Bool(false);
    for (char c : t.s) {
      const auto u = static_cast<unsigned char>(c);
      const bool ok = name == "isdigit"   ? std::isdigit(u)
                      : name == "isalpha" ? std::isalpha(u)
                                          : std::isspace(u);
      if (!ok) return Value::Bool(false);
    }
    return Value::Bool(true);
  }
  *found = false;
  return Value();
}

absl::StatusOr<Value> ToInt(Interpreter& in, const Value& v, const Value* dflt) {
  const Value fallback = dflt ? *dflt : Value::Int(0);
  if (v.is_int() || v.is_bool()) return Value::Int(v.as_int());
  if (v.is_float()) {
    if (!std::isfinite(v.as_float()) || std::fabs(v.as_float()) > 9.2e18) return fallback;
    return Value::Int(static_cast<int64_t>(v.as_float()));
  }
  if (v.is_string()) {
    std::string s = v.str();
    auto [b, e] = StripRange(s, kPyWhitespace, true, true);
    s = s.substr(b, e - b);
    errno = 0;
    char* end = nullptr;
    const long long r = std::strtoll(s.c_str(), &end, 10);
    if (!s.empty() && end == s.c_str() + s.size() && errno == 0) return Value::Int(r);
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(d) && std::fabs(d) < 9.2e18) {
      return Value::Int(static_cast<int64_t>(d));
    }
  }
  return fallback;
}

}  // namespace

Text HtmlEscape(const Text& t) {
  Text out;
  for (size_t i = 0; i < t.s.size(); ++i) {
    const char c = t.s[i];
    const char* rep = c == '&'    ? "&amp;"
                      : c == '<'  ? "&lt;"
                      : c == '>'  ? "&gt;"
                      : c == '"'  ? "&#34;"
                      : c == '\'' ? "&#39;"
                                  : nullptr;
    if (rep) {
      out.AppendMarked(rep, t.IsUser(i));
    } else {
      out.Append(t.Slice(i, i + 1));
    }
  }
  return out;
}

bool IsKnownFilter(std::string_view name) { return Filters().contains(name); }
bool IsKnownTest(std::string_view name) { return Tests().contains(name); }

absl::StatusOr<bool> ApplyTest(Interpreter& in, const std::string& name, const Value& v,
                               CallArgs& args) {
  if (!IsKnownTest(name)) return in.ErrorAt(args.at, absl::StrCat("no test named '", name, "'"));
  return TestValue(in, name, v, args);
}

absl::StatusOr<Value> ApplyFilter(Interpreter& in, const std::string& name, const Value& v,
                                  CallArgs& args) {
  const Value* a0 = args.Get(0, "");
  auto str_of = [](const Value& x) { return ToText(x); };
  if (name == "safe") return v.is_string() ? v.AsMarkup() : Value::String(str_of(v)).AsMarkup();
  if (name == "default" || name == "d") {
    const Value* dflt = args.Get(0, "default_value");
    const Value* boolean = args.Get(1, "boolean");
    const bool use = v.is_undefined() || (boolean && boolean->Truthy() && !v.Truthy());
    if (!use) return v;
    return dflt ? *dflt : Value::String("");
  }
  if (name == "length" || name == "count") {
    if (v.is_generator()) return in.ErrorAt(args.at, "object of type 'generator' has no len()");
    if (v.is_string()) return Value::Int(static_cast<int64_t>(CodePointCount(v.str())));
    if (v.is_list()) return Value::Int(static_cast<int64_t>(v.list().size()));
    if (v.is_dict()) return Value::Int(static_cast<int64_t>(v.dict().size()));
    if (v.is_undefined()) return Value::Int(0);
    return in.ErrorAt(args.at, absl::StrCat("object of type '", TypeName(v), "' has no len()"));
  }
  if (name == "tojson") {
    const Value* indent = args.Get(0, "indent");
    int n = -1;
    if (indent && indent->is_int())
      n = static_cast<int>(std::clamp<int64_t>(indent->as_int(), 0, 64));
    bool ascii = false;
    for (const auto& [k, x] : args.keyword) {
      if (k == "sort_keys" && x.Truthy())
        return in.ErrorAt(args.at, "tojson(sort_keys=True) is not supported");
      if (k == "ensure_ascii") ascii = x.Truthy();
      if (k == "separators") return in.ErrorAt(args.at, "tojson(separators=...) is not supported");
    }
    auto j = ToJson(v, n, in.limits().max_nesting, ascii);
    if (!j.ok()) return in.ErrorAt(args.at, std::string(j.status().message()));
    if (auto st = in.Charge(args.at, j->s.size()); !st.ok()) return st;
    return Value::String(std::move(*j));
  }
  if (name == "string") return v.is_string() ? v : Value::String(str_of(v));
  if (name == "escape" || name == "e") {
    if (v.is_markup()) return v;
    return Value::String(HtmlEscape(str_of(v))).AsMarkup();
  }
  if (name == "int") return ToInt(in, v, args.Get(0, "default"));
  if (name == "float") {
    if (v.is_number()) return Value::Float(v.as_number());
    if (v.is_string()) {
      char* end = nullptr;
      const double d = std::strtod(v.str().c_str(), &end);
      if (!v.str().empty() && end == v.str().c_str() + v.str().size()) return Value::Float(d);
    }
    const Value* d = args.Get(0, "default");
    return d ? *d : Value::Float(0);
  }
  if (name == "abs") {
    if (v.is_float()) return Value::Float(std::fabs(v.as_float()));
    if (v.is_int() || v.is_bool()) {
      if (v.as_int() == INT64_MIN) return in.ErrorAt(args.at, "integer overflow");
      return Value::Int(v.as_int() < 0 ? -v.as_int() : v.as_int());
    }
    return in.ErrorAt(args.at, "abs needs a number");
  }
  if (name == "round") {
    if (!v.is_number()) return in.ErrorAt(args.at, "round needs a number");
    const Value* prec = args.Get(0, "precision");
    const double p =
        std::pow(10.0, prec && prec->is_int() ? static_cast<double>(prec->as_int()) : 0.0);
    return Value::Float(std::nearbyint(v.as_number() * p) / p);
  }
  if (name == "trim" || name == "striptags") {
    const Text t = str_of(v);
    std::string_view chars = kPyWhitespace;
    if (name == "trim" && a0 && a0->is_string()) chars = a0->str();
    auto [b, e] = StripRange(t.s, chars, true, true);
    return Value::String(t.Slice(b, e));
  }
  if (name == "upper")
    return Value::String(MapAscii(str_of(v), [](size_t, char c) { return Up(c); }));
  if (name == "lower")
    return Value::String(MapAscii(str_of(v), [](size_t, char c) { return Low(c); }));
  if (name == "capitalize") return Value::String(Capitalize(str_of(v)));
  if (name == "title") return Value::String(JinjaTitle(str_of(v)));
  if (name == "replace") {
    const Value* old = args.Get(0, "old");
    const Value* repl = args.Get(1, "new");
    const Value* count = args.Get(2, "count");
    if (!old || !repl) return in.ErrorAt(args.at, "replace needs two arguments");
    Text r = Replace(str_of(v), str_of(*old), str_of(*repl),
                     count && count->is_int() ? count->as_int() : -1);
    if (auto st = in.Charge(args.at, r.s.size()); !st.ok()) return st;
    return Value::String(std::move(r));
  }
  if (name == "wordcount") {
    return Value::Int(static_cast<int64_t>(Split(str_of(v), nullptr, -1).size()));
  }
  if (name == "center") {
    const Text t = str_of(v);
    const Value* w = args.Get(0, "width");
    const int64_t width = w && w->is_int() ? std::min<int64_t>(w->as_int(), 1 << 20) : 80;
    const int64_t len = static_cast<int64_t>(CodePointCount(t.s));
    if (len >= width) return Value::String(t);
    const int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
    Text out(std::string(static_cast<size_t>(left), ' '));
    out.Append(t);
    out.Append(std::string(static_cast<size_t>(pad - left), ' '));
    return Value::String(std::move(out));
  }
  if (name == "indent") {
    const Text t = str_of(v);
    const Value* w = args.Get(0, "width");
    const Value* first = args.Get(1, "first");
    const Value* blank = args.Get(2, "blank");
    std::string pad = "    ";
    if (w && w->is_int())
      pad = std::string(static_cast<size_t>(std::clamp<int64_t>(w->as_int(), 0, 256)), ' ');
    if (w && w->is_string()) pad = w->str();
    Text out;
    size_t start = 0;
    bool first_line = true;
    while (start <= t.s.size()) {
      size_t nl = t.s.find('\n', start);
      const size_t end = nl == std::string::npos ? t.s.size() : nl;
      const bool empty = end == start;
      const bool do_pad =
          first_line ? (first && first->Truthy()) : (!empty || (blank && blank->Truthy()));
      if (do_pad && !(first_line && empty && nl == std::string::npos && false)) out.Append(pad);
      out.Append(t.Slice(start, nl == std::string::npos ? end : end + 1));
      first_line = false;
      if (nl == std::string::npos) break;
      start = nl + 1;
      if (start == t.s.size()) break;
    }
    if (auto st = in.Charge(args.at, out.s.size()); !st.ok()) return st;
    return Value::String(std::move(out));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::MakeList();
    if (!v.is_dict()) return in.ErrorAt(args.at, "items needs a mapping");
    return Items(v);
  }
  if (name == "dictsort") {
    if (!v.is_dict()) return in.ErrorAt(args.at, "dictsort needs a mapping");
    Value items = Items(v);
    std::stable_sort(items.list().begin(), items.list().end(), [](const Value& a, const Value& b) {
      std::string x = a.list()[0].str(), y = b.list()[0].str();
      for (char& c : x) c = Low(c);
      for (char& c : y) c = Low(c);
      return x < y;
    });
    return items;
  }
  // jinja2's select/reject/map yield nothing for a falsy input (None too).
  const bool lazy = name == "selectattr" || name == "rejectattr" || name == "select" ||
                    name == "reject" || name == "map";
  if (lazy && !v.Truthy()) return Value::MakeList().AsGenerator();
  // Filters over sequences.
  auto items = Iterate(in, v, args.at);
  if (!items.ok()) return items.status();
  if (name == "list") return Value::MakeList(std::move(*items));
  if (name == "first") return items->empty() ? Value::Undefined("first item") : items->front();
  if (name == "last") return items->empty() ? Value::Undefined("last item") : items->back();
  if (name == "reverse") {
    if (v.is_string()) {
      Text out;
      for (auto it = items->rbegin(); it != items->rend(); ++it) out.Append(it->text());
      return Value::String(std::move(out));
    }
    std::reverse(items->begin(), items->end());
    return Value::MakeList(std::move(*items));
  }
  if (name == "join") {
    const Value* sep = args.Get(0, "d");
    const Value* attr = args.Get(1, "attribute");
    const Text d = sep ? str_of(*sep) : Text();
    Text out;
    for (size_t i = 0; i < items->size(); ++i) {
      if (i > 0) out.Append(d);
      out.Append(str_of(attr ? GetPath((*items)[i], str_of(*attr).s) : (*items)[i]));
      if (out.s.size() > in.limits().max_output_bytes) break;
    }
    if (auto st = in.Charge(args.at, out.s.size()); !st.ok()) return st;
    return Value::String(std::move(out));
  }
  if (name == "unique") {
    List out;
    for (const Value& x : *items) {
      bool seen = false;
      for (const Value& y : out) seen = seen || Equal(x, y);
      if (!seen) out.push_back(x);
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "sum" || name == "min" || name == "max") {
    if (items->empty()) return name == "sum" ? Value::Int(0) : Value::Undefined("empty sequence");
    Value acc = (*items)[0];
    for (size_t i = 1; i < items->size(); ++i) {
      const Value& x = (*items)[i];
      if (!x.is_number() || !acc.is_number()) {
        if (name != "sum" && x.is_string() && acc.is_string()) {
          if ((name == "min") == (x.str() < acc.str())) acc = x;
          continue;
        }
        return in.ErrorAt(args.at, absl::StrCat(name, " needs numbers"));
      }
      if (name == "sum") {
        acc = acc.is_float() || x.is_float() ? Value::Float(acc.as_number() + x.as_number())
                                             : Value::Int(acc.as_int() + x.as_int());
      } else if ((name == "min") == (x.as_number() < acc.as_number())) {
        acc = x;
      }
    }
    return acc;
  }
  if (name == "sort") {
    const Value* reverse = args.Get(0, "reverse");
    const Value* attr = args.Get(2, "attribute");
    bool bad = false;
    std::stable_sort(items->begin(), items->end(), [&](const Value& a, const Value& b) {
      const Value x = attr ? GetPath(a, str_of(*attr).s) : a;
      const Value y = attr ? GetPath(b, str_of(*attr).s) : b;
      if (x.is_number() && y.is_number()) return x.as_number() < y.as_number();
      if (x.is_string() && y.is_string()) return x.str() < y.str();
      bad = true;
      return false;
    });
    if (bad) return in.ErrorAt(args.at, "sort needs comparable items");
    if (reverse && reverse->Truthy()) std::reverse(items->begin(), items->end());
    return Value::MakeList(std::move(*items));
  }
  if (name == "batch") {
    const Value* n = args.Get(0, "linecount");
    if (!n || !n->is_int() || n->as_int() <= 0)
      return in.ErrorAt(args.at, "batch needs a positive size");
    List out;
    for (size_t i = 0; i < items->size(); i += static_cast<size_t>(n->as_int())) {
      const size_t e = std::min(items->size(), i + static_cast<size_t>(n->as_int()));
      out.push_back(Value::MakeList(List(items->begin() + i, items->begin() + e)));
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "selectattr" || name == "rejectattr") {
    auto r = Select(in, v, args, true, name == "selectattr");
    if (!r.ok()) return r;
    return r->AsGenerator();
  }
  if (name == "select" || name == "reject") {
    auto r = Select(in, v, args, false, name == "select");
    if (!r.ok()) return r;
    return r->AsGenerator();
  }
  if (name == "map") {
    const Value* attr = nullptr;
    for (const auto& [k, x] : args.keyword) {
      if (k == "attribute") attr = &x;
    }
    List out;
    if (attr) {
      const Value* dflt = nullptr;
      for (const auto& [k, x] : args.keyword) {
        if (k == "default") dflt = &x;
      }
      for (const Value& x : *items) {
        Value r = GetPath(x, str_of(*attr).s);
        out.push_back(r.is_undefined() && dflt ? *dflt : r);
      }
      return Value::MakeList(std::move(out)).AsGenerator();
    }
    if (args.positional.empty() || !args.positional[0].is_string()) {
      return in.ErrorAt(args.at, "map needs a filter name or attribute=");
    }
    const std::string filter = args.positional[0].str();
    if (!IsKnownFilter(filter))
      return in.ErrorAt(args.at, absl::StrCat("no filter named '", filter, "'"));
    CallArgs rest;
    rest.at = args.at;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.keyword = args.keyword;
    for (const Value& x : *items) {
      if (auto st = in.CountIteration(args.at); !st.ok()) return st;
      auto r = ApplyFilter(in, filter, x, rest);
      if (!r.ok()) return r.status();
      out.push_back(std::move(*r));
    }
    return Value::MakeList(std::move(out)).AsGenerator();
  }
  return in.ErrorAt(args.at, absl::StrCat("no filter named '", name, "'"));
}

absl::StatusOr<Value> CallMethod(Interpreter& in, const Value& obj, const std::string& name,
                                 CallArgs& args, bool* found) {
  *found = false;
  if (obj.is_string()) return StrMethod(in, obj, name, args, found);
  if (obj.is_dict()) {
    *found = true;
    if (name == "items") return Items(obj);
    if (name == "keys" || name == "values") {
      List out;
      for (const auto& [k, x] : obj.dict()) out.push_back(name == "keys" ? Value::String(k) : x);
      return Value::MakeList(std::move(out));
    }
    if (name == "get") {
      const Value* key = args.Get(0, "key");
      const Value* dflt = args.Get(1, "default");
      if (!key) return in.ErrorAt(args.at, "get() needs a key");
      const Value* v = key->is_string() ? obj.Find(key->str()) : nullptr;
      if (v) return *v;
      return dflt ? *dflt : Value::None();
    }
    if (name == "copy") return Value::MakeDict(obj.dict());
    if (name == "update" || name == "pop" || name == "setdefault" || name == "clear" ||
        name == "popitem") {
      return in.ErrorAt(
          args.at, absl::StrCat("dict.", name, "() is unsafe: templates may not modify a dict"));
    }
    *found = false;
    return Value();
  }
  if (obj.is_list()) {
    *found = true;
    if (name == "index" || name == "count") {
      const Value* x = args.Get(0, "value");
      if (!x) return in.ErrorAt(args.at, absl::StrCat(name, "() needs an argument"));
      int64_t n = 0;
      for (size_t i = 0; i < obj.list().size(); ++i) {
        if (!Equal(obj.list()[i], *x)) continue;
        if (name == "index") return Value::Int(static_cast<int64_t>(i));
        ++n;
      }
      if (name == "index") return in.ErrorAt(args.at, "list.index(x): x not in list");
      return Value::Int(n);
    }
    if (name == "append" || name == "extend" || name == "pop" || name == "insert" ||
        name == "remove" || name == "clear" || name == "sort" || name == "reverse") {
      return in.ErrorAt(
          args.at, absl::StrCat("list.", name, "() is unsafe: templates may not modify a list"));
    }
    *found = false;
  }
  return Value();
}

void AddGlobals(Dict* g) {
  auto has = [&](std::string_view k) {
    for (const auto& [key, v] : *g) {
      if (key.s == k) return true;
    }
    return false;
  };
  auto add = [&](std::string name, NativeFn fn) {
    if (!has(name)) g->emplace_back(Text(name), Value::Callable(name, std::move(fn)));
  };
  add("raise_exception", [](Interpreter& in, CallArgs& a) -> absl::StatusOr<Value> {
    const std::string msg = a.positional.empty() ? "" : ToText(a.positional[0]).s;
    return absl::InvalidArgumentError(absl::StrCat("chat template raised: ", msg));
  });
  add("strftime_now", [](Interpreter& in, CallArgs& a) -> absl::StatusOr<Value> {
    if (a.positional.empty() || !a.positional[0].is_string()) {
      return in.ErrorAt(a.at, "strftime_now needs a format string");
    }
    const std::time_t now = in.now();
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[256];
    const size_t n = std::strftime(buf, sizeof buf, a.positional[0].str().c_str(), &tm);
    if (n == 0 && !a.positional[0].str().empty())
      return in.ErrorAt(a.at, "strftime_now: format too long");
    return Value::String(std::string(buf, n));
  });
  add("range", [](Interpreter& in, CallArgs& a) -> absl::StatusOr<Value> {
    int64_t v[3] = {0, 0, 1};
    for (const Value& x : a.positional) {
      if (!x.is_int()) return in.ErrorAt(a.at, "range() needs integers");
    }
    if (a.positional.size() == 1) {
      v[1] = a.positional[0].as_int();
    } else if (a.positional.size() == 2 || a.positional.size() == 3) {
      for (size_t i = 0; i < a.positional.size(); ++i) v[i] = a.positional[i].as_int();
    } else {
      return in.ErrorAt(a.at, "range() takes 1 to 3 arguments");
    }
    if (v[2] == 0) return in.ErrorAt(a.at, "range() step must not be zero");
    List out;
    for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) {
      if (auto st = in.CountIteration(a.at); !st.ok()) return st;
      out.push_back(Value::Int(i));
    }
    return Value::MakeList(std::move(out));
  });
  add("namespace", [](Interpreter& in, CallArgs& a) -> absl::StatusOr<Value> {
    Dict d;
    for (const Value& x : a.positional) {
      if (!x.is_dict()) return in.ErrorAt(a.at, "namespace() takes a mapping or keywords");
      for (const auto& kv : x.dict()) d.push_back(kv);
    }
    for (const auto& [k, x] : a.keyword) d.emplace_back(Text(k), x);
    Value ns = Value::MakeNamespace(std::move(d));
    in.TrackNamespace(ns);
    return ns;
  });
  add("dict", [](Interpreter& in, CallArgs& a) -> absl::StatusOr<Value> {
    Value d = Value::MakeDict();
    for (const auto& [k, x] : a.keyword) d.Set(Text(k), x);
    return d;
  });
}

}  // namespace pdserve::jinja
