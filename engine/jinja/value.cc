#include "engine/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve::jinja {

Text Text::User(std::string s) {
  Text t(std::move(s));
  if (!t.s.empty()) t.user.push_back({0, t.s.size()});
  return t;
}

void Text::AppendMarked(std::string_view bytes, bool is_user) {
  const size_t at = s.size();
  s.append(bytes);
  if (!is_user || bytes.empty()) return;
  if (!user.empty() && user.back().end == at) {
    user.back().end = s.size();
  } else {
    user.push_back({at, s.size()});
  }
}

void Text::Append(const Text& other) {
  const size_t at = s.size();
  s.append(other.s);
  for (const ByteRange& r : other.user) {
    if (!user.empty() && user.back().end == at + r.begin) {
      user.back().end = at + r.end;
    } else {
      user.push_back({at + r.begin, at + r.end});
    }
  }
}

Text Text::Slice(size_t b, size_t e) const {
  e = std::min(e, s.size());
  b = std::min(b, e);
  Text out(s.substr(b, e - b));
  for (const ByteRange& r : user) {
    const size_t rb = std::max(r.begin, b), re = std::min(r.end, e);
    if (rb < re) out.user.push_back({rb - b, re - b});
  }
  return out;
}

bool Text::IsUser(size_t i) const {
  for (const ByteRange& r : user) {
    if (i < r.begin) return false;
    if (i < r.end) return true;
  }
  return false;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !str_->s.empty();
    case Kind::kList:
      return !list_->empty();
    case Kind::kDict:
      return is_namespace_ || !dict_->empty();
    case Kind::kCallable:
      return true;
  }
  return false;
}

const Value* Value::Find(std::string_view key) const {
  if (kind_ != Kind::kDict) return nullptr;
  for (const auto& [k, v] : *dict_) {
    if (k.s == key) return &v;
  }
  return nullptr;
}

void Value::Set(const Text& key, Value v) const {
  for (auto& [k, old] : *dict_) {
    if (k.s == key.s) {
      old = std::move(v);
      return;
    }
  }
  dict_->emplace_back(key, std::move(v));
}

const char* TypeName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "str";
    case Value::Kind::kList:
      return "list";
    case Value::Kind::kDict:
      return v.is_namespace() ? "Namespace" : "dict";
    case Value::Kind::kCallable:
      return "function";
  }
  return "object";
}

std::string FloatRepr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f < 0 ? "-inf" : "inf";
  // Shortest round-trip digits, then Python's layout: scientific when the
  // decimal exponent is < -4 or >= 16.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t epos = sci.find('e');
  std::string mant = sci.substr(0, epos);
  const int exp = std::stoi(sci.substr(epos + 1));
  bool neg = false;
  if (!mant.empty() && mant[0] == '-') {
    neg = true;
    mant.erase(0, 1);
  }
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits.push_back(c);
  }
  std::string out = neg ? "-" : "";
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) absl::StrAppend(&out, ".", digits.substr(1));
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += e;
    return out;
  }
  if (exp < 0) {
    out += "0.";
    out.append(static_cast<size_t>(-exp - 1), '0');
    out += digits;
    return out;
  }
  const size_t int_len = static_cast<size_t>(exp) + 1;
  if (digits.size() <= int_len) {
    out += digits;
    out.append(int_len - digits.size(), '0');
    out += ".0";
  } else {
    absl::StrAppend(&out, digits.substr(0, int_len), ".", digits.substr(int_len));
  }
  return out;
}

namespace {

bool IsPrintable(uint32_t cp) {
  // Python's str.isprintable, approximated: control characters and the
  // Latin-1 non-breaking space are escaped in repr.
  return !(cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0xa0) || cp == 0xad);
}

// Decodes one UTF-8 code point at s[i]; returns its length (1 for bad bytes).
size_t DecodeUtf8(std::string_view s, size_t i, uint32_t* cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + n > s.size()) n = 1;
  if (n == 1) {
    *cp = c;
    return 1;
  }
  uint32_t v = c & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  *cp = v;
  return n;
}

void ReprString(const Text& t, Text* out) {
  const std::string& s = t.s;
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  out->Append(std::string(1, quote));
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const size_t n = DecodeUtf8(s, i, &cp);
    const bool user = t.IsUser(i);
    std::string piece;
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      piece = absl::StrCat("\\", std::string(1, static_cast<char>(cp)));
    } else if (cp == '\n') {
      piece = "\\n";
    } else if (cp == '\r') {
      piece = "\\r";
    } else if (cp == '\t') {
      piece = "\\t";
    } else if (!IsPrintable(cp)) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", cp);
      piece = buf;
    } else {
      piece = s.substr(i, n);
    }
    out->AppendMarked(piece, user);
    i += n;
  }
  out->Append(std::string(1, quote));
}

void ReprInto(const Value& v, Text* out, int depth) {
  if (depth > 200) {
    out->Append("[...]");
    return;
  }
  switch (v.kind()) {
    case Value::Kind::kString:
      ReprString(v.text(), out);
      return;
    case Value::Kind::kList: {
      out->Append("[");
      bool first = true;
      for (const Value& e : v.list()) {
        if (!first) out->Append(", ");
        first = false;
        ReprInto(e, out, depth + 1);
      }
      out->Append("]");
      return;
    }
    case Value::Kind::kDict: {
      if (v.is_namespace()) out->Append("<Namespace ");
      out->Append("{");
      bool first = true;
      for (const auto& [k, e] : v.dict()) {
        if (!first) out->Append(", ");
        first = false;
        ReprString(k, out);
        out->Append(": ");
        ReprInto(e, out, depth + 1);
      }
      out->Append("}");
      if (v.is_namespace()) out->Append(">");
      return;
    }
    default:
      out->Append(ToText(v));
  }
}

void JsonString(const Text& t, bool ascii, Text* out) {
  const std::string& s = t.s;
  out->Append("\"");
  size_t run = 0;  // start of the pending unescaped run
  auto flush = [&](size_t end) {
    // Copy the unescaped bytes [run, end) keeping provenance.
    out->Append(t.Slice(run, end));
  };
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    const char* esc = nullptr;
    char buf[8];
    switch (c) {
      case '"':
        esc = "\\\"";
        break;
      case '\\':
        esc = "\\\\";
        break;
      case '\n':
        esc = "\\n";
        break;
      case '\r':
        esc = "\\r";
        break;
      case '\t':
        esc = "\\t";
        break;
      case '\b':
        esc = "\\b";
        break;
      case '\f':
        esc = "\\f";
        break;
      default:
        if (c < 0x20) {
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          esc = buf;
        }
    }
    if (ascii && c >= 0x80) {
      // \uXXXX (a surrogate pair above the BMP), as Python's ensure_ascii.
      uint32_t cp;
      const size_t n = DecodeUtf8(s, i, &cp);
      std::string e;
      char u[16];
      if (cp >= 0x10000) {
        const uint32_t v = cp - 0x10000;
        std::snprintf(u, sizeof u, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
      } else {
        std::snprintf(u, sizeof u, "\\u%04x", cp);
      }
      flush(i);
      out->AppendMarked(u, t.IsUser(i));
      i += n - 1;
      run = i + 1;
      continue;
    }
    if (esc == nullptr) continue;
    flush(i);
    out->AppendMarked(esc, t.IsUser(i));
    run = i + 1;
  }
  flush(s.size());
  out->Append("\"");
}

absl::Status JsonInto(const Value& v, int indent, int level, int max_depth, bool ascii, Text* out) {
  if (v.is_generator()) {
    return absl::InvalidArgumentError("tojson: Object of type generator is not JSON serializable");
  }
  if (level > max_depth) {
    return absl::InvalidArgumentError(
        absl::StrCat("tojson: value nested deeper than ", max_depth, " levels"));
  }
  auto newline = [&](int lvl) {
    if (indent < 0) return;
    out->Append("\n");
    out->Append(std::string(static_cast<size_t>(indent) * lvl, ' '));
  };
  const char* item_sep = indent < 0 ? ", " : ",";
  switch (v.kind()) {
    case Value::Kind::kNone:
      out->Append("null");
      return absl::OkStatus();
    case Value::Kind::kBool:
      out->Append(v.as_bool() ? "true" : "false");
      return absl::OkStatus();
    case Value::Kind::kInt:
      out->Append(absl::StrCat(v.as_int()));
      return absl::OkStatus();
    case Value::Kind::kFloat: {
      const double f = v.as_float();
      if (std::isnan(f)) {
        out->Append("NaN");
      } else if (std::isinf(f)) {
        out->Append(f < 0 ? "-Infinity" : "Infinity");
      } else {
        out->Append(FloatRepr(f));
      }
      return absl::OkStatus();
    }
    case Value::Kind::kString:
      JsonString(v.text(), ascii, out);
      return absl::OkStatus();
    case Value::Kind::kList: {
      if (v.list().empty()) {
        out->Append("[]");
        return absl::OkStatus();
      }
      out->Append("[");
      bool first = true;
      for (const Value& e : v.list()) {
        if (!first) out->Append(item_sep);
        first = false;
        newline(level + 1);
        if (auto st = JsonInto(e, indent, level + 1, max_depth, ascii, out); !st.ok()) return st;
      }
      newline(level);
      out->Append("]");
      return absl::OkStatus();
    }
    case Value::Kind::kDict: {
      if (v.is_namespace()) break;
      if (v.dict().empty()) {
        out->Append("{}");
        return absl::OkStatus();
      }
      out->Append("{");
      bool first = true;
      for (const auto& [k, e] : v.dict()) {
        if (!first) out->Append(item_sep);
        first = false;
        newline(level + 1);
        JsonString(k, ascii, out);
        out->Append(": ");
        if (auto st = JsonInto(e, indent, level + 1, max_depth, ascii, out); !st.ok()) return st;
      }
      newline(level);
      out->Append("}");
      return absl::OkStatus();
    }
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("tojson: Object of type ", TypeName(v), " is not JSON serializable"));
}

}  // namespace

Text ToText(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return Text();
    case Value::Kind::kNone:
      return Text("None");
    case Value::Kind::kBool:
      return Text(v.as_bool() ? "True" : "False");
    case Value::Kind::kInt:
      return Text(absl::StrCat(v.as_int()));
    case Value::Kind::kFloat:
      return Text(FloatRepr(v.as_float()));
    case Value::Kind::kString:
      return v.text();
    case Value::Kind::kList:
    case Value::Kind::kDict:
      return Repr(v);
    case Value::Kind::kCallable:
      return Text(absl::StrCat("<function ", v.name(), ">"));
  }
  return Text();
}

Text Repr(const Value& v) {
  Text out;
  ReprInto(v, &out, 0);
  return out;
}

absl::StatusOr<Text> ToJson(const Value& v, int indent, int max_depth, bool ensure_ascii) {
  Text out;
  if (auto st = JsonInto(v, indent, 0, max_depth, ensure_ascii, &out); !st.ok()) return st;
  return out;
}

namespace {
bool EqualAt(const Value& a, const Value& b, int depth);
}  // namespace

bool Equal(const Value& a, const Value& b) { return EqualAt(a, b, 0); }

namespace {
bool EqualAt(const Value& a, const Value& b, int depth) {
  // Values deeper than this (only reachable through namespace cycles) are
  // unequal rather than a stack overflow.
  if (depth > 512) return false;
  if (a.is_namespace() || b.is_namespace()) return &a.dict() == &b.dict();
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_number() == b.as_number();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.str() == b.str();
    case Value::Kind::kList: {
      if (a.list().size() != b.list().size()) return false;
      for (size_t i = 0; i < a.list().size(); ++i) {
        if (!EqualAt(a.list()[i], b.list()[i], depth + 1)) return false;
      }
      return true;
    }
    case Value::Kind::kDict: {
      if (a.dict().size() != b.dict().size()) return false;
      for (const auto& [k, e] : a.dict()) {
        const Value* o = b.Find(k.s);
        if (o == nullptr || !EqualAt(e, *o, depth + 1)) return false;
      }
      return true;
    }
    case Value::Kind::kCallable:
      return &a.fn() == &b.fn();
    default:
      return false;
  }
}
}  // namespace

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (char c : s) {
    if ((static_cast<unsigned char>(c) & 0xc0) != 0x80) ++n;
  }
  return n;
}

std::vector<size_t> CodePointOffsets(std::string_view s) {
  std::vector<size_t> out;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xc0) != 0x80) out.push_back(i);
  }
  out.push_back(s.size());
  return out;
}

}  // namespace pdserve::jinja
