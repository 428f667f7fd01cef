#include "engine/jinja/parser.h"

#include <cctype>
#include <charconv>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve::jinja {
namespace {

enum class Tok {
  kText,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type;
  std::string value;
  SourcePos pos;
  int64_t i = 0;
  double f = 0;
};

absl::Status ErrorAt(SourcePos p, std::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat("template error at line ", p.line, ", column ",
                                                 p.column, ": ", std::string(msg)));
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Splits the source into text and tag tokens, applying whitespace control.
class Lexer {
 public:
  explicit Lexer(std::string_view raw) {
    // Newlines normalised to \n and one trailing newline dropped, as jinja2
    // does with keep_trailing_newline=False.
    src_.reserve(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\r') {
        src_.push_back('\n');
        if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
      } else {
        src_.push_back(raw[i]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      const size_t tag = FindTagStart(pos);
      std::string text = src_.substr(pos, (tag == std::string::npos ? src_.size() : tag) - pos);
      if (tag == std::string::npos) {
        Emit(Tok::kText, std::move(text), pos);
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      const char mod = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (mod == '-') {
        size_t e = text.size();
        while (e > 0 && IsSpace(text[e - 1])) --e;
        text.resize(e);
      } else if (mod != '+' && kind != '{') {
        // lstrip_blocks: drop spaces between the line start and the tag.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size()) {
          bool all_ws = true;
          for (size_t k = l_pos; k < text.size(); ++k) all_ws = all_ws && IsSpace(text[k]);
          if (all_ws) text.resize(l_pos);
        }
      }
      Emit(Tok::kText, std::move(text), pos);
      size_t p = tag + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
      if (kind == '#') {
        const size_t end = src_.find("#}", p);
        if (end == std::string::npos) return ErrorAt(PosOf(tag), "unterminated comment '{#'");
        pos = end + 2;
        if (end > p && src_[end - 1] == '-') {
          while (pos < src_.size() && IsSpace(src_[pos])) ++pos;
        } else if (pos < src_.size() && src_[pos] == '\n') {
          ++pos;  // trim_blocks
        }
        line_starting = src_[pos - 1] == '\n';
        continue;
      }
      if (kind == '%' && IsRawTag(p)) {
        auto st = LexRaw(tag, &pos);
        if (!st.ok()) return st;
        line_starting = pos > 0 && src_[pos - 1] == '\n';
        continue;
      }
      Emit(kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "", tag);
      auto end = LexInside(p, kind == '{', PosOf(tag));
      if (!end.ok()) return end.status();
      pos = *end;
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    Emit(Tok::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t FindTagStart(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return std::string::npos;
  }

  SourcePos PosOf(size_t offset) const {
    size_t lo = 0, hi = line_starts_.size();
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      if (line_starts_[mid] <= offset)
        lo = mid;
      else
        hi = mid;
    }
    return {static_cast<int>(lo + 1), static_cast<int>(offset - line_starts_[lo] + 1)};
  }

  void Emit(Tok t, std::string v, size_t offset) {
    if (t == Tok::kText && v.empty()) return;
    tokens_.push_back(Token{t, std::move(v), PosOf(offset)});
  }

  bool IsRawTag(size_t p) const {
    while (p < src_.size() && IsSpace(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && IsSpace(src_[p])) ++p;
    if (p < src_.size() && src_[p] == '-') ++p;
    return src_.compare(p, 2, "%}") == 0;
  }

  // {% raw %}...{% endraw %}: the body is text.
  absl::Status LexRaw(size_t tag, size_t* pos) {
    size_t p = src_.find("%}", tag) + 2;
    const bool strip_after_open = src_[src_.find("%}", tag) - 1] == '-';
    if (strip_after_open) {
      while (p < src_.size() && IsSpace(src_[p])) ++p;
    }
    for (size_t e = src_.find("{%", p); e != std::string::npos; e = src_.find("{%", e + 1)) {
      size_t q = e + 2;
      const bool strip_before = q < src_.size() && src_[q] == '-';
      if (strip_before || (q < src_.size() && src_[q] == '+')) ++q;
      while (q < src_.size() && IsSpace(src_[q])) ++q;
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q += 6;
      while (q < src_.size() && IsSpace(src_[q])) ++q;
      bool strip_after = false;
      if (q < src_.size() && src_[q] == '-') {
        strip_after = true;
        ++q;
      }
      if (src_.compare(q, 2, "%}") != 0) continue;
      std::string body = src_.substr(p, e - p);
      if (strip_before) {
        while (!body.empty() && IsSpace(body.back())) body.pop_back();
      }
      Emit(Tok::kText, std::move(body), p);
      *pos = q + 2;
      if (strip_after) {
        while (*pos < src_.size() && IsSpace(src_[*pos])) ++*pos;
      } else if (*pos < src_.size() && src_[*pos] == '\n') {
        ++*pos;
      }
      return absl::OkStatus();
    }
    return ErrorAt(PosOf(tag), "unterminated '{% raw %}' (missing '{% endraw %}')");
  }

  // Tokens of a {{ }} or {% %} tag starting at p; returns the offset after it.
  absl::StatusOr<size_t> LexInside(size_t p, bool is_var, SourcePos open) {
    int depth = 0;
    while (true) {
      while (p < src_.size() && IsSpace(src_[p])) ++p;
      if (p >= src_.size()) {
        return ErrorAt(
            open, is_var ? "unterminated '{{' (missing '}}')" : "unterminated '{%' (missing '%}')");
      }
      const char close = is_var ? '}' : '%';
      if (depth == 0) {
        bool strip = false;
        size_t q = p;
        if ((src_[q] == '-' || src_[q] == '+') && q + 2 < src_.size() + 0 && src_[q + 1] == close &&
            q + 2 <= src_.size() && src_[q + 2] == '}') {
          strip = src_[q] == '-';
          ++q;
        }
        if (q + 1 < src_.size() && src_[q] == close && src_[q + 1] == '}') {
          Emit(is_var ? Tok::kVarEnd : Tok::kBlockEnd, "", p);
          q += 2;
          if (strip) {
            while (q < src_.size() && IsSpace(src_[q])) ++q;
          } else if (!is_var && q < src_.size() && src_[q] == '\n' && src_[q - 3] != '+') {
            ++q;  // trim_blocks
          }
          return q;
        }
      }
      const char c = src_[p];
      const size_t start = p;
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (p < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[p])) || src_[p] == '_')) {
          ++p;
        }
        Emit(Tok::kName, src_.substr(start, p - start), start);
        continue;
      }
      if (std::isdigit(static_cast<unsigned char>(c))) {
        bool is_float = false;
        while (p < src_.size() &&
               (std::isdigit(static_cast<unsigned char>(src_[p])) || src_[p] == '_'))
          ++p;
        if (p + 1 < src_.size() && src_[p] == '.' &&
            std::isdigit(static_cast<unsigned char>(src_[p + 1]))) {
          is_float = true;
          ++p;
          while (p < src_.size() &&
                 (std::isdigit(static_cast<unsigned char>(src_[p])) || src_[p] == '_'))
            ++p;
        }
        if (p < src_.size() && (src_[p] == 'e' || src_[p] == 'E')) {
          size_t q = p + 1;
          if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
          if (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) {
            is_float = true;
            p = q;
            while (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) ++p;
          }
        }
        std::string digits;
        for (size_t k = start; k < p; ++k) {
          if (src_[k] != '_') digits.push_back(src_[k]);
        }
        Token t{is_float ? Tok::kFloat : Tok::kInt, digits, PosOf(start)};
        if (is_float) {
          t.f = std::strtod(digits.c_str(), nullptr);
        } else {
          auto r = std::from_chars(digits.data(), digits.data() + digits.size(), t.i);
          if (r.ec != std::errc()) return ErrorAt(PosOf(start), "integer literal out of range");
        }
        tokens_.push_back(std::move(t));
        continue;
      }
      if (c == '\'' || c == '"') {
        auto s = LexString(&p);
        if (!s.ok()) return s.status();
        Emit(Tok::kString, "", start);
        tokens_.back().value = std::move(*s);
        continue;
      }
      static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
      bool two = false;
      for (std::string_view op : kTwo) {
        if (src_.compare(p, 2, op) == 0) {
          Emit(Tok::kOp, std::string(op), p);
          p += 2;
          two = true;
          break;
        }
      }
      if (two) continue;
      if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) == std::string_view::npos) {
        return ErrorAt(PosOf(p), absl::StrCat("unexpected character '", std::string(1, c), "'"));
      }
      if (c == '(' || c == '[' || c == '{') ++depth;
      if (c == ')' || c == ']' || c == '}') {
        if (depth == 0) {
          return ErrorAt(PosOf(p), absl::StrCat("unexpected '", std::string(1, c), "'"));
        }
        --depth;
      }
      Emit(Tok::kOp, std::string(1, c), p);
      ++p;
    }
  }

  // A quoted literal with Python escapes; p is at the opening quote.
  absl::StatusOr<std::string> LexString(size_t* p) {
    const size_t start = *p;
    const char q = src_[(*p)++];
    std::string out;
    while (*p < src_.size() && src_[*p] != q) {
      char c = src_[(*p)++];
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (*p >= src_.size()) break;
      c = src_[(*p)++];
      switch (c) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case '0':
          out.push_back('\0');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case '\\':
        case '\'':
        case '"':
          out.push_back(c);
          break;
        case '\n':
          break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = c == 'x' ? 2 : c == 'u' ? 4 : 8;
          if (*p + n > src_.size()) return ErrorAt(PosOf(start), "truncated \\x/\\u escape");
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            const char h = src_[*p + k];
            if (!std::isxdigit(static_cast<unsigned char>(h))) {
              return ErrorAt(PosOf(start), "bad \\x/\\u escape");
            }
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                     ? h - '0'
                                                     : (std::tolower(h) - 'a' + 10));
          }
          *p += n;
          if (cp > 0x10ffff) return ErrorAt(PosOf(start), "escape out of Unicode range");
          if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
          } else if (cp < 0x10000) {
            out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
          } else {
            out.push_back(static_cast<char>(0xf0 | (cp >> 18)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
          }
          break;
        }
        default:  // unknown escapes stay as written
          out.push_back('\\');
          out.push_back(c);
      }
    }
    if (*p >= src_.size()) return ErrorAt(PosOf(start), "unterminated string literal");
    ++*p;
    return out;
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

using ExprPtr = std::unique_ptr<Expr>;

class Parser {
 public:
  Parser(std::vector<Token> toks, int max_depth) : t_(std::move(toks)), max_depth_(max_depth) {}

  absl::StatusOr<Body> ParseTemplate() {
    std::string end;
    auto body = ParseBody({}, &end);
    if (!body.ok()) return body.status();
    return body;
  }

 private:
  const Token& Cur() const { return t_[i_]; }
  const Token& Peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool IsOp(std::string_view op) const { return Cur().type == Tok::kOp && Cur().value == op; }
  bool IsName(std::string_view n) const { return Cur().type == Tok::kName && Cur().value == n; }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    ++i_;
    return true;
  }
  bool SkipName(std::string_view n) {
    if (!IsName(n)) return false;
    ++i_;
    return true;
  }
  static std::string Describe(const Token& t) {
    switch (t.type) {
      case Tok::kEof:
        return "end of template";
      case Tok::kBlockEnd:
        return "'%}'";
      case Tok::kVarEnd:
        return "'}}'";
      case Tok::kText:
        return "text";
      case Tok::kVarBegin:
        return "'{{'";
      case Tok::kBlockBegin:
        return "'{%'";
      case Tok::kString:
        return "string literal";
      default:
        return absl::StrCat("'", t.value, "'");
    }
  }
  absl::Status Unexpected(std::string_view wanted) const {
    return ErrorAt(Cur().pos,
                   absl::StrCat("expected ", std::string(wanted), ", got ", Describe(Cur())));
  }
  absl::Status ExpectOp(std::string_view op) {
    if (SkipOp(op)) return absl::OkStatus();
    return Unexpected(absl::StrCat("'", std::string(op), "'"));
  }
  absl::Status ExpectBlockEnd() {
    if (Cur().type == Tok::kBlockEnd) {
      ++i_;
      return absl::OkStatus();
    }
    return Unexpected("'%}'");
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Cur().type != Tok::kName) return Unexpected("a name");
    return t_[i_++].value;
  }

  struct DepthGuard {
    Parser* p;
    explicit DepthGuard(Parser* p) : p(p) { ++p->depth_; }
    ~DepthGuard() { --p->depth_; }
  };
  absl::Status CheckDepth() const {
    if (depth_ > max_depth_) {
      return ErrorAt(Cur().pos,
                     absl::StrCat("template nested deeper than ", max_depth_, " levels"));
    }
    return absl::OkStatus();
  }

  ExprPtr Make(ExprKind k, SourcePos pos) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->pos = pos;
    return e;
  }

  // Statements until a {% name %} with name in `ends`; *end gets that name.
  absl::StatusOr<Body> ParseBody(std::initializer_list<std::string_view> ends, std::string* end) {
    DepthGuard g(this);
    if (auto st = CheckDepth(); !st.ok()) return st;
    Body body;
    while (true) {
      const Token& tok = Cur();
      if (tok.type == Tok::kEof) {
        if (ends.size() == 0) return body;
        return ErrorAt(tok.pos, absl::StrCat("unexpected end of template, expected '{% ",
                                             std::string(*(ends.end() - 1)), " %}'"));
      }
      if (tok.type == Tok::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kText;
        s->pos = tok.pos;
        s->text = tok.value;
        body.push_back(std::move(s));
        ++i_;
        continue;
      }
      if (tok.type == Tok::kVarBegin) {
        ++i_;
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->pos = tok.pos;
        auto e = ParseTuple();
        if (!e.ok()) return e.status();
        s->expr = std::move(*e);
        if (Cur().type != Tok::kVarEnd) return Unexpected("'}}'");
        ++i_;
        body.push_back(std::move(s));
        continue;
      }
      if (tok.type != Tok::kBlockBegin) return Unexpected("text or a tag");
      ++i_;
      if (Cur().type != Tok::kName) return Unexpected("a statement name");
      const std::string name = Cur().value;
      for (std::string_view e : ends) {
        if (name == e) {
          ++i_;
          *end = name;
          return body;
        }
      }
      auto s = ParseStatement();
      if (!s.ok()) return s.status();
      body.push_back(std::move(*s));
    }
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseStatement() {
    const Token tok = Cur();
    const std::string& name = tok.value;
    auto s = std::make_unique<Stmt>();
    s->pos = tok.pos;
    ++i_;
    if (name == "if") return ParseIf(std::move(s));
    if (name == "for") return ParseFor(std::move(s));
    if (name == "set") return ParseSet(std::move(s));
    if (name == "macro") return ParseMacro(std::move(s));
    if (name == "call") return ParseCall(std::move(s));
    if (name == "break" || name == "continue") {
      s->kind = name == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
    if (name == "generation") {
      s->kind = StmtKind::kScope;
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
      std::string end;
      auto body = ParseBody({"endgeneration"}, &end);
      if (!body.ok()) return body.status();
      s->body = std::move(*body);
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
    if (name == "filter") {
      s->kind = StmtKind::kFilterBlock;
      auto f = ParseFilterChain(nullptr);
      if (!f.ok()) return f.status();
      s->expr = std::move(*f);
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
      std::string end;
      auto body = ParseBody({"endfilter"}, &end);
      if (!body.ok()) return body.status();
      s->body = std::move(*body);
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
    return ErrorAt(tok.pos, absl::StrCat("unknown tag '", name, "'"));
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseIf(std::unique_ptr<Stmt> s) {
    s->kind = StmtKind::kIf;
    auto cond = ParseTuple();
    if (!cond.ok()) return cond.status();
    s->expr = std::move(*cond);
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    std::string end;
    auto body = ParseBody({"elif", "else", "endif"}, &end);
    if (!body.ok()) return body.status();
    s->body = std::move(*body);
    if (end == "elif") {
      auto elif = std::make_unique<Stmt>();
      elif->pos = t_[i_ - 1].pos;
      auto e = ParseIf(std::move(elif));
      if (!e.ok()) return e.status();
      s->else_body.push_back(std::move(*e));
      return s;
    }
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    if (end == "else") {
      auto eb = ParseBody({"endif"}, &end);
      if (!eb.ok()) return eb.status();
      s->else_body = std::move(*eb);
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    }
    return s;
  }

  // Assignment targets: `a`, `a, b`, `(a, b)`.
  absl::StatusOr<std::vector<std::string>> ParseTargets() {
    std::vector<std::string> out;
    const bool paren = SkipOp("(");
    do {
      auto n = ExpectName();
      if (!n.ok()) return n.status();
      out.push_back(*n);
    } while (SkipOp(",") && Cur().type == Tok::kName);
    if (paren) {
      if (auto st = ExpectOp(")"); !st.ok()) return st;
    }
    return out;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseFor(std::unique_ptr<Stmt> s) {
    s->kind = StmtKind::kFor;
    auto targets = ParseTargets();
    if (!targets.ok()) return targets.status();
    s->targets = std::move(*targets);
    if (!SkipName("in")) return Unexpected("'in'");
    auto iter = ParseTuple(/*with_condexpr=*/false);
    if (!iter.ok()) return iter.status();
    s->expr = std::move(*iter);
    if (SkipName("if")) {
      auto f = ParseExpression();
      if (!f.ok()) return f.status();
      s->filter = std::move(*f);
    }
    if (IsName("recursive")) return ErrorAt(Cur().pos, "recursive loops are not supported");
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    std::string end;
    auto body = ParseBody({"else", "endfor"}, &end);
    if (!body.ok()) return body.status();
    s->body = std::move(*body);
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    if (end == "else") {
      auto eb = ParseBody({"endfor"}, &end);
      if (!eb.ok()) return eb.status();
      s->else_body = std::move(*eb);
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    }
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseSet(std::unique_ptr<Stmt> s) {
    s->kind = StmtKind::kSet;
    if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().value == ".") {
      s->targets.push_back(Cur().value);
      i_ += 2;
      auto attr = ExpectName();
      if (!attr.ok()) return attr.status();
      s->text = *attr;
      s->set_attr = true;
    } else {
      auto targets = ParseTargets();
      if (!targets.ok()) return targets.status();
      s->targets = std::move(*targets);
    }
    if (SkipOp("=")) {
      auto e = ParseTuple();
      if (!e.ok()) return e.status();
      s->expr = std::move(*e);
      if (auto st = ExpectBlockEnd(); !st.ok()) return st;
      return s;
    }
    if (s->set_attr || s->targets.size() != 1) return Unexpected("'='");
    s->kind = StmtKind::kSetBlock;
    if (IsOp("|")) {
      auto f = ParseFilterChain(nullptr);
      if (!f.ok()) return f.status();
      s->filter = std::move(*f);
    }
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    std::string end;
    auto body = ParseBody({"endset"}, &end);
    if (!body.ok()) return body.status();
    s->body = std::move(*body);
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    return s;
  }

  // `(a, b=default, ...)` of a macro or call block.
  absl::Status ParseParams(Stmt* s) {
    if (auto st = ExpectOp("("); !st.ok()) return st;
    while (!IsOp(")")) {
      if (!s->targets.empty()) {
        if (auto st = ExpectOp(","); !st.ok()) return st;
        if (IsOp(")")) break;
      }
      auto n = ExpectName();
      if (!n.ok()) return n.status();
      s->targets.push_back(*n);
      if (SkipOp("=")) {
        auto d = ParseExpression();
        if (!d.ok()) return d.status();
        s->defaults.push_back(std::move(*d));
      } else {
        s->defaults.push_back(nullptr);
      }
    }
    ++i_;
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseMacro(std::unique_ptr<Stmt> s) {
    s->kind = StmtKind::kMacro;
    auto name = ExpectName();
    if (!name.ok()) return name.status();
    s->text = *name;
    if (auto st = ParseParams(s.get()); !st.ok()) return st;
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    std::string end;
    auto body = ParseBody({"endmacro"}, &end);
    if (!body.ok()) return body.status();
    s->body = std::move(*body);
    SkipName(s->text);
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseCall(std::unique_ptr<Stmt> s) {
    s->kind = StmtKind::kCallBlock;
    if (IsOp("(")) {
      if (auto st = ParseParams(s.get()); !st.ok()) return st;
    }
    auto e = ParseExpression();
    if (!e.ok()) return e.status();
    if ((*e)->kind != ExprKind::kCall)
      return ErrorAt(s->pos, "'{% call %}' needs a call expression");
    s->expr = std::move(*e);
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    std::string end;
    auto body = ParseBody({"endcall"}, &end);
    if (!body.ok()) return body.status();
    s->body = std::move(*body);
    if (auto st = ExpectBlockEnd(); !st.ok()) return st;
    return s;
  }

  // expr or an unparenthesised tuple `a, b`.
  absl::StatusOr<ExprPtr> ParseTuple(bool with_condexpr = true) {
    const SourcePos pos = Cur().pos;
    auto first = with_condexpr ? ParseExpression() : ParseOr();
    if (!first.ok()) return first;
    if (!IsOp(",")) return first;
    auto tuple = Make(ExprKind::kTuple, pos);
    tuple->args.push_back(std::move(*first));
    while (SkipOp(",")) {
      if (Cur().type == Tok::kVarEnd || Cur().type == Tok::kBlockEnd || IsName("if")) break;
      auto e = with_condexpr ? ParseExpression() : ParseOr();
      if (!e.ok()) return e;
      tuple->args.push_back(std::move(*e));
    }
    return tuple;
  }

  absl::StatusOr<ExprPtr> ParseExpression() {
    DepthGuard g(this);
    if (auto st = CheckDepth(); !st.ok()) return st;
    const SourcePos pos = Cur().pos;
    auto e = ParseOr();
    if (!e.ok()) return e;
    ExprPtr node = std::move(*e);
    while (SkipName("if")) {
      auto cond = ParseOr();
      if (!cond.ok()) return cond;
      auto c = Make(ExprKind::kCondExpr, pos);
      c->args.push_back(std::move(node));
      c->args.push_back(std::move(*cond));
      if (SkipName("else")) {
        auto other = ParseExpression();
        if (!other.ok()) return other;
        c->args.push_back(std::move(*other));
      } else {
        c->args.push_back(nullptr);
      }
      node = std::move(c);
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    const SourcePos pos = Cur().pos;
    auto l = ParseAnd();
    if (!l.ok()) return l;
    ExprPtr node = std::move(*l);
    while (SkipName("or")) {
      auto r = ParseAnd();
      if (!r.ok()) return r;
      auto n = Make(ExprKind::kOr, pos);
      n->args.push_back(std::move(node));
      n->args.push_back(std::move(*r));
      node = std::move(n);
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    const SourcePos pos = Cur().pos;
    auto l = ParseNot();
    if (!l.ok()) return l;
    ExprPtr node = std::move(*l);
    while (SkipName("and")) {
      auto r = ParseNot();
      if (!r.ok()) return r;
      auto n = Make(ExprKind::kAnd, pos);
      n->args.push_back(std::move(node));
      n->args.push_back(std::move(*r));
      node = std::move(n);
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    DepthGuard g(this);
    if (auto st = CheckDepth(); !st.ok()) return st;
    const SourcePos pos = Cur().pos;
    if (SkipName("not")) {
      auto e = ParseNot();
      if (!e.ok()) return e;
      auto n = Make(ExprKind::kUnary, pos);
      n->name = "not";
      n->args.push_back(std::move(*e));
      return n;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    const SourcePos pos = Cur().pos;
    auto l = ParseMath1();
    if (!l.ok()) return l;
    ExprPtr node = std::move(*l);
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Cur().type == Tok::kOp &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" || Cur().value == ">" ||
           Cur().value == "<=" || Cur().value == ">=")) {
        op = Cur().value;
        ++i_;
      } else if (IsName("in")) {
        op = "in";
        ++i_;
      } else if (IsName("not") && Peek().type == Tok::kName && Peek().value == "in") {
        op = "notin";
        i_ += 2;
      } else {
        break;
      }
      auto r = ParseMath1();
      if (!r.ok()) return r;
      if (!cmp) {
        cmp = Make(ExprKind::kCompare, pos);
        cmp->args.push_back(std::move(node));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(std::move(*r));
    }
    return cmp ? std::move(cmp) : std::move(node);
  }

  absl::StatusOr<ExprPtr> Binary(std::initializer_list<std::string_view> ops,
                                 absl::StatusOr<ExprPtr> (Parser::*next)()) {
    const SourcePos pos = Cur().pos;
    auto l = (this->*next)();
    if (!l.ok()) return l;
    ExprPtr node = std::move(*l);
    while (true) {
      std::string op;
      for (std::string_view o : ops) {
        if (IsOp(o)) op = std::string(o);
      }
      if (op.empty()) break;
      ++i_;
      auto r = (this->*next)();
      if (!r.ok()) return r;
      auto n = Make(ExprKind::kBinary, pos);
      n->name = op;
      n->args.push_back(std::move(node));
      n->args.push_back(std::move(*r));
      node = std::move(n);
    }
    return node;
  }
  absl::StatusOr<ExprPtr> ParseMath1() { return Binary({"+", "-"}, &Parser::ParseConcat); }
  absl::StatusOr<ExprPtr> ParseConcat() { return Binary({"~"}, &Parser::ParseMath2); }
  absl::StatusOr<ExprPtr> ParseMath2() { return Binary({"*", "/", "//", "%"}, &Parser::ParsePow); }
  absl::StatusOr<ExprPtr> ParsePow() { return Binary({"**"}, &Parser::ParseUnaryFiltered); }
  absl::StatusOr<ExprPtr> ParseUnaryFiltered() { return ParseUnary(true); }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    DepthGuard g(this);
    if (auto st = CheckDepth(); !st.ok()) return st;
    const SourcePos pos = Cur().pos;
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const std::string op = Cur().value;
      ++i_;
      auto e = ParseUnary(false);
      if (!e.ok()) return e;
      node = Make(ExprKind::kUnary, pos);
      node->name = op;
      node->args.push_back(std::move(*e));
    } else {
      auto e = ParsePrimary();
      if (!e.ok()) return e;
      node = std::move(*e);
    }
    auto p = ParsePostfix(std::move(node));
    if (!p.ok() || !with_filter) return p;
    return ParseFilterExpr(std::move(*p));
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& tok = Cur();
    const SourcePos pos = tok.pos;
    if (tok.type == Tok::kName) {
      auto n = Make(ExprKind::kLiteral, pos);
      const std::string& v = tok.value;
      if (v == "true" || v == "True") {
        n->literal = Value::Bool(true);
      } else if (v == "false" || v == "False") {
        n->literal = Value::Bool(false);
      } else if (v == "none" || v == "None") {
        n->literal = Value::None();
      } else {
        n->kind = ExprKind::kName;
        n->name = v;
      }
      ++i_;
      return n;
    }
    if (tok.type == Tok::kString) {
      std::string s;
      while (Cur().type == Tok::kString) s += t_[i_++].value;
      auto n = Make(ExprKind::kLiteral, pos);
      n->literal = Value::String(std::move(s));
      return n;
    }
    if (tok.type == Tok::kInt || tok.type == Tok::kFloat) {
      auto n = Make(ExprKind::kLiteral, pos);
      n->literal = tok.type == Tok::kInt ? Value::Int(tok.i) : Value::Float(tok.f);
      ++i_;
      return n;
    }
    if (SkipOp("(")) {
      if (SkipOp(")")) return Make(ExprKind::kTuple, pos);
      auto first = ParseExpression();
      if (!first.ok()) return first;
      if (SkipOp(")")) return first;
      auto tuple = Make(ExprKind::kTuple, pos);
      tuple->args.push_back(std::move(*first));
      while (SkipOp(",")) {
        if (IsOp(")")) break;
        auto e = ParseExpression();
        if (!e.ok()) return e;
        tuple->args.push_back(std::move(*e));
      }
      if (auto st = ExpectOp(")"); !st.ok()) return st;
      return tuple;
    }
    if (SkipOp("[")) {
      auto list = Make(ExprKind::kList, pos);
      while (!IsOp("]")) {
        if (!list->args.empty()) {
          if (auto st = ExpectOp(","); !st.ok()) return st;
          if (IsOp("]")) break;
        }
        auto e = ParseExpression();
        if (!e.ok()) return e;
        list->args.push_back(std::move(*e));
      }
      ++i_;
      return list;
    }
    if (SkipOp("{")) {
      auto dict = Make(ExprKind::kDict, pos);
      while (!IsOp("}")) {
        if (!dict->args.empty()) {
          if (auto st = ExpectOp(","); !st.ok()) return st;
          if (IsOp("}")) break;
        }
        auto k = ParseExpression();
        if (!k.ok()) return k;
        if (auto st = ExpectOp(":"); !st.ok()) return st;
        auto v = ParseExpression();
        if (!v.ok()) return v;
        dict->args.push_back(std::move(*k));
        dict->args.push_back(std::move(*v));
      }
      ++i_;
      return dict;
    }
    return Unexpected("an expression");
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      const SourcePos pos = Cur().pos;
      if (SkipOp(".")) {
        if (Cur().type == Tok::kName) {
          auto n = Make(ExprKind::kGetAttr, pos);
          n->name = t_[i_++].value;
          n->args.push_back(std::move(node));
          node = std::move(n);
        } else if (Cur().type == Tok::kInt) {
          auto n = Make(ExprKind::kGetItem, pos);
          n->args.push_back(std::move(node));
          auto idx = Make(ExprKind::kLiteral, pos);
          idx->literal = Value::Int(t_[i_++].i);
          n->args.push_back(std::move(idx));
          node = std::move(n);
        } else {
          return Unexpected("an attribute name");
        }
      } else if (SkipOp("[")) {
        auto sub = ParseSubscript(std::move(node), pos);
        if (!sub.ok()) return sub;
        node = std::move(*sub);
      } else if (IsOp("(")) {
        auto call = ParseCallArgs(std::move(node), pos);
        if (!call.ok()) return call;
        node = std::move(*call);
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr target, SourcePos pos) {
    ExprPtr parts[3];
    int n_parts = 0;
    bool is_slice = false;
    if (!IsOp(":")) {
      auto e = ParseExpression();
      if (!e.ok()) return e;
      parts[0] = std::move(*e);
    }
    n_parts = 1;
    while (n_parts < 3 && SkipOp(":")) {
      is_slice = true;
      if (!IsOp(":") && !IsOp("]")) {
        auto e = ParseExpression();
        if (!e.ok()) return e;
        parts[n_parts] = std::move(*e);
      }
      ++n_parts;
    }
    if (auto st = ExpectOp("]"); !st.ok()) return st;
    if (!is_slice) {
      if (!parts[0]) return ErrorAt(pos, "empty subscript");
      auto n = Make(ExprKind::kGetItem, pos);
      n->args.push_back(std::move(target));
      n->args.push_back(std::move(parts[0]));
      return n;
    }
    auto n = Make(ExprKind::kSlice, pos);
    n->args.push_back(std::move(target));
    for (auto& p : parts) n->args.push_back(std::move(p));
    return n;
  }

  // Fills args[1..] and kwargs of `node` (whose args[0] is already set).
  absl::Status ParseArgsInto(Expr* node) {
    if (auto st = ExpectOp("("); !st.ok()) return st;
    bool first = true;
    while (!IsOp(")")) {
      if (!first) {
        if (auto st = ExpectOp(","); !st.ok()) return st;
        if (IsOp(")")) break;
      }
      first = false;
      if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().value == "=") {
        std::string key = Cur().value;
        i_ += 2;
        auto v = ParseExpression();
        if (!v.ok()) return v.status();
        node->kwargs.emplace_back(std::move(key), std::move(*v));
        continue;
      }
      if (IsOp("*") || IsOp("**"))
        return ErrorAt(Cur().pos, "*args and **kwargs are not supported");
      auto v = ParseExpression();
      if (!v.ok()) return v.status();
      if (!node->kwargs.empty()) return ErrorAt(v->get()->pos, "positional argument after keyword");
      node->args.push_back(std::move(*v));
    }
    ++i_;
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> ParseCallArgs(ExprPtr callee, SourcePos pos) {
    auto n = Make(ExprKind::kCall, pos);
    n->args.push_back(std::move(callee));
    if (auto st = ParseArgsInto(n.get()); !st.ok()) return st;
    return n;
  }

  // `| f(args) | g` applied to `input` (null for a filter block).
  absl::StatusOr<ExprPtr> ParseFilterChain(ExprPtr input) {
    ExprPtr node = std::move(input);
    bool first = node == nullptr;
    while (first || SkipOp("|")) {
      first = false;
      const SourcePos pos = Cur().pos;
      auto name = ExpectName();
      if (!name.ok()) return name.status();
      auto f = Make(ExprKind::kFilter, pos);
      f->name = *name;
      while (IsOp(".") && Peek().type == Tok::kName) {
        f->name += "." + Peek().value;
        i_ += 2;
      }
      f->args.push_back(std::move(node));
      if (IsOp("(")) {
        if (auto st = ParseArgsInto(f.get()); !st.ok()) return st;
      }
      node = std::move(f);
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        auto f = ParseFilterChain(std::move(node));
        if (!f.ok()) return f;
        node = std::move(*f);
      } else if (IsName("is")) {
        const SourcePos pos = Cur().pos;
        ++i_;
        auto t = Make(ExprKind::kTest, pos);
        t->negated = SkipName("not");
        auto name = ExpectName();
        if (!name.ok()) return name.status();
        t->name = *name;
        t->args.push_back(std::move(node));
        if (IsOp("(")) {
          if (auto st = ParseArgsInto(t.get()); !st.ok()) return st;
        } else if ((Cur().type == Tok::kName || Cur().type == Tok::kString ||
                    Cur().type == Tok::kInt || Cur().type == Tok::kFloat || IsOp("[") ||
                    IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and") && !IsName("if")) {
          auto arg = ParsePrimary();
          if (!arg.ok()) return arg;
          auto post = ParsePostfix(std::move(*arg));
          if (!post.ok()) return post;
          t->args.push_back(std::move(*post));
        }
        node = std::move(t);
      } else if (IsOp("(")) {
        const SourcePos pos = Cur().pos;
        auto call = ParseCallArgs(std::move(node), pos);
        if (!call.ok()) return call;
        node = std::move(*call);
      } else {
        return node;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int max_depth_;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<Body> Parse(std::string_view source, int max_depth) {
  Lexer lexer(source);
  auto tokens = lexer.Run();
  if (!tokens.ok()) return tokens.status();
  Parser parser(std::move(*tokens), max_depth);
  return parser.ParseTemplate();
}

}  // namespace pdserve::jinja
