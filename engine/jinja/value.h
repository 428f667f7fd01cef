// Values of the Jinja renderer: Python-like dynamic values (None, bool, int,
// float, str, list, dict, callables) and a string type that remembers which
// of its bytes came from user content, so the caller can tokenize those bytes
// as plain text (a user typing "<|im_end|>" must not end the turn).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::jinja {

// [begin, end) byte offsets into a rendered string.
struct ByteRange {
  size_t begin = 0;
  size_t end = 0;
  bool operator==(const ByteRange& o) const { return begin == o.begin && end == o.end; }
};

// A string plus the byte ranges of it that came from user content. The
// ranges are sorted, disjoint and never adjacent (adjacent ones are merged).
struct Text {
  std::string s;
  std::vector<ByteRange> user;

  Text() = default;
  explicit Text(std::string plain) : s(std::move(plain)) {}
  static Text User(std::string s);

  void Append(std::string_view plain) { s.append(plain); }
  void Append(const Text& other);
  // Appends `bytes`, all of them user content when `is_user`.
  void AppendMarked(std::string_view bytes, bool is_user);
  // Bytes [b, e) with their provenance.
  Text Slice(size_t b, size_t e) const;
  // Whether byte `i` came from user content.
  bool IsUser(size_t i) const;
  bool AnyUser() const { return !user.empty(); }
};

class Value;
struct CallArgs;
class Interpreter;
using List = std::vector<Value>;
// Insertion-ordered, like a Python dict; keys are strings (JSON keys) and
// keep their provenance.
using Dict = std::vector<std::pair<Text, Value>>;
using NativeFn = std::function<absl::StatusOr<Value>(Interpreter&, CallArgs&)>;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };

  Value() = default;  // undefined
  static Value Undefined(std::string name = "") {
    Value v;
    v.undefined_name_ = std::move(name);
    return v;
  }
  static Value None() { return Value(Kind::kNone); }
  static Value Bool(bool b) {
    Value v(Kind::kBool);
    v.i_ = b ? 1 : 0;
    return v;
  }
  static Value Int(int64_t i) {
    Value v(Kind::kInt);
    v.i_ = i;
    return v;
  }
  static Value Float(double f) {
    Value v(Kind::kFloat);
    v.f_ = f;
    return v;
  }
  static Value String(Text t) {
    Value v(Kind::kString);
    v.str_ = std::make_shared<Text>(std::move(t));
    return v;
  }
  static Value String(std::string s) { return String(Text(std::move(s))); }
  static Value MakeList(List items = {}) {
    Value v(Kind::kList);
    for (const Value& e : items) v.depth_ = std::max(v.depth_, e.depth_ + 1);
    v.list_ = std::make_shared<List>(std::move(items));
    return v;
  }
  static Value MakeDict(Dict items = {}) {
    Value v(Kind::kDict);
    for (const auto& kv : items) v.depth_ = std::max(v.depth_, kv.second.depth_ + 1);
    v.dict_ = std::make_shared<Dict>(std::move(items));
    return v;
  }
  // A namespace() object: a dict whose attributes templates may assign.
  static Value MakeNamespace(Dict items = {}) {
    Value v = MakeDict(std::move(items));
    v.is_namespace_ = true;
    return v;
  }
  static Value Callable(std::string name, NativeFn fn) {
    Value v(Kind::kCallable);
    v.fn_ = std::make_shared<NativeFn>(std::move(fn));
    v.undefined_name_ = std::move(name);
    return v;
  }

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  // int, float or bool (Python's bool is an int).
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return is_namespace_; }
  bool is_callable() const { return kind_ == Kind::kCallable; }
  // A jinja2 Markup string (from `safe`/`escape`): `+` with a plain string
  // HTML-escapes the plain one, as Python's Markup.__add__ does.
  bool is_markup() const { return markup_; }
  Value AsMarkup() const {
    Value v = *this;
    v.markup_ = true;
    return v;
  }
  // A generator (what jinja2's map/select/selectattr return): iterable, but
  // tojson, length and subscripts fail on it as they do in Python.
  bool is_generator() const { return generator_; }
  Value AsGenerator() const {
    Value v = *this;
    v.generator_ = true;
    return v;
  }

  bool as_bool() const { return i_ != 0; }
  int64_t as_int() const { return i_; }
  double as_float() const { return f_; }
  // int, bool or float as a double.
  double as_number() const { return is_float() ? f_ : static_cast<double>(i_); }
  const Text& text() const { return *str_; }
  const std::string& str() const { return str_->s; }
  List& list() const { return *list_; }
  Dict& dict() const { return *dict_; }
  const NativeFn& fn() const { return *fn_; }
  // Nesting of lists and dicts when built (a namespace's later attribute
  // assignments are not counted); bounds recursion over values.
  int depth() const { return depth_; }
  // The name an undefined value was looked up by, or a callable's name.
  const std::string& name() const { return undefined_name_; }

  // Python truthiness.
  bool Truthy() const;
  // A dict entry or nullptr.
  const Value* Find(std::string_view key) const;
  void Set(const Text& key, Value v) const;

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::kUndefined;
  bool is_namespace_ = false;
  bool markup_ = false;
  bool generator_ = false;
  int depth_ = 0;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<Text> str_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<NativeFn> fn_;
  std::string undefined_name_;
};

// Python's type name of the value, for error messages ('str', 'list', ...).
const char* TypeName(const Value& v);

// Python repr() of a float (shortest round trip: 1.0, 0.1, 1e+20).
std::string FloatRepr(double f);

// str(v) as Jinja prints it: None -> "None", True -> "True", lists and dicts
// as Python's repr, undefined -> "".
Text ToText(const Value& v);
// Python repr(v).
Text Repr(const Value& v);

// json.dumps(v, ensure_ascii=ensure_ascii, indent=indent, sort_keys=False)
// as transformers' tojson does; indent < 0 means None (one line).
absl::StatusOr<Text> ToJson(const Value& v, int indent, int max_depth, bool ensure_ascii = false);

// Python ==.
bool Equal(const Value& a, const Value& b);

// Number of Unicode code points (Python len of a str).
size_t CodePointCount(std::string_view s);
// Byte offsets of each code point start, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(std::string_view s);

}  // namespace pdserve::jinja
