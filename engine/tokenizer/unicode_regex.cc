#include "engine/tokenizer/unicode_regex.h"

#include <unicode/parseerr.h>
#include <unicode/regex.h>
#include <unicode/unistr.h>
#include <unicode/utext.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace pdserve {

using unicode::DecodedText;

class RegexSplitter::Stage {
 public:
  virtual ~Stage() = default;
  // Splits each range of `in` and appends the pieces to `out`.
  virtual absl::Status Split(std::string_view text, const DecodedText& t,
                             const std::vector<TextRange>& in,
                             std::vector<TextRange>* out) const = 0;
  virtual bool is_icu() const = 0;
};

namespace {

constexpr uint8_t kL = unicode::kLetter;
constexpr uint8_t kN = unicode::kNumber;
constexpr uint8_t kWs = unicode::kWhitespace;

// [^\s\p{L}\p{N}]
inline bool IsOther(uint8_t flags) { return (flags & (kL | kN | kWs)) == 0; }
inline bool IsCrLf(char32_t c) { return c == '\r' || c == '\n'; }
inline char32_t AsciiLower(char32_t c) { return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c; }

// End of the run of code points from `pos` (< end) whose flags satisfy `pred`.
template <typename Pred>
inline size_t RunEnd(const DecodedText& t, size_t pos, size_t end, Pred pred) {
  while (pos < end && pred(t.flags[pos])) ++pos;
  return pos;
}

// Length of an apostrophe contraction at `pos` ('s 't 're 've 'm 'll 'd), 0 if none.
inline size_t MatchContraction(const DecodedText& t, size_t pos, size_t end, bool any_case) {
  if (t.cps[pos] != '\'' || pos + 1 >= end) return 0;
  auto norm = [any_case](char32_t c) { return any_case ? AsciiLower(c) : c; };
  const char32_t c1 = norm(t.cps[pos + 1]);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (pos + 2 >= end) return 0;
  const char32_t c2 = norm(t.cps[pos + 2]);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ at a whitespace code point: a run followed by a non-space
// gives its last space to the next piece, unless the run is a single space.
inline size_t MatchTrailingSpaces(const DecodedText& t, size_t pos, size_t end) {
  const size_t run = RunEnd(t, pos, end, [](uint8_t f) { return (f & kWs) != 0; });
  const size_t n = run - pos;
  if (run < end && n > 1) return n - 1;
  return n;
}

// kGpt2Regex. Returns the match length at `pos` (every position matches).
size_t MatchGpt2(const DecodedText& t, size_t pos, size_t end) {
  if (size_t n = MatchContraction(t, pos, end, /*any_case=*/false)) return n;
  const char32_t c = t.cps[pos];
  // ` ?X+` for X in \p{L}, \p{N}, [^\s\p{L}\p{N}]: the class of the first
  // code point after the optional space decides which alternative applies.
  size_t start = pos;
  if (c == ' ' && pos + 1 < end && (t.flags[pos + 1] & kWs) == 0) start = pos + 1;
  const uint8_t f = t.flags[start];
  if (f & kL) return RunEnd(t, start, end, [](uint8_t g) { return (g & kL) != 0; }) - pos;
  if (f & kN) return RunEnd(t, start, end, [](uint8_t g) { return (g & kN) != 0; }) - pos;
  if (IsOther(f)) return RunEnd(t, start, end, IsOther) - pos;
  return MatchTrailingSpaces(t, pos, end);
}

// kLlama3Regex (max_digits 3) and kQwen2Regex (max_digits 1).
size_t MatchLlama3Family(const DecodedText& t, size_t pos, size_t end, size_t max_digits) {
  if (size_t n = MatchContraction(t, pos, end, /*any_case=*/true)) return n;
  const char32_t c = t.cps[pos];
  const uint8_t f = t.flags[pos];
  auto is_letter = [](uint8_t g) { return (g & kL) != 0; };
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (f & kL) return RunEnd(t, pos, end, is_letter) - pos;
  if (!IsCrLf(c) && (f & kN) == 0 && pos + 1 < end && (t.flags[pos + 1] & kL)) {
    return RunEnd(t, pos + 1, end, is_letter) - pos;
  }
  // \p{N}{1,max_digits}
  if (f & kN) {
    // Scan at most max_digits: scanning the whole run each time would be
    // quadratic on a long run of digits.
    const size_t limit = std::min(end, pos + max_digits);
    return RunEnd(t, pos, limit, [](uint8_t g) { return (g & kN) != 0; }) - pos;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t start = pos;
  if (c == ' ' && pos + 1 < end && IsOther(t.flags[pos + 1])) start = pos + 1;
  if (IsOther(t.flags[start])) {
    size_t q = RunEnd(t, start, end, IsOther);
    while (q < end && IsCrLf(t.cps[q])) ++q;
    return q - pos;
  }
  // \s*[\r\n]+: up to and including the last CR/LF of the whitespace run.
  const size_t run = RunEnd(t, pos, end, [](uint8_t g) { return (g & kWs) != 0; });
  for (size_t q = run; q > pos; --q) {
    if (IsCrLf(t.cps[q - 1])) return q - pos;
  }
  return MatchTrailingSpaces(t, pos, end);
}

size_t MatchLlama3(const DecodedText& t, size_t pos, size_t end) {
  return MatchLlama3Family(t, pos, end, 3);
}
size_t MatchQwen2(const DecodedText& t, size_t pos, size_t end) {
  return MatchLlama3Family(t, pos, end, 1);
}
// kSingleDigitRegex.
size_t MatchSingleDigit(const DecodedText& t, size_t pos, size_t end) {
  return (t.flags[pos] & kN) ? 1 : 0;
}

using MatchFn = size_t (*)(const DecodedText&, size_t, size_t);

// Runs a hand-written matcher like a regex `find` loop: at each position a
// match (length > 0) becomes a piece; unmatched code points collect into the
// piece before the next match.
class HandWrittenStage : public RegexSplitter::Stage {
 public:
  explicit HandWrittenStage(MatchFn match) : match_(match) {}
  absl::Status Split(std::string_view, const DecodedText& t, const std::vector<TextRange>& in,
                     std::vector<TextRange>* out) const override {
    for (const TextRange& r : in) {
      uint32_t gap = r.begin;
      uint32_t pos = r.begin;
      while (pos < r.end) {
        const size_t n = match_(t, pos, r.end);
        if (n == 0) {
          ++pos;
          continue;
        }
        if (gap < pos) out->push_back({gap, pos});
        out->push_back({pos, static_cast<uint32_t>(pos + n)});
        pos += static_cast<uint32_t>(n);
        gap = pos;
      }
      if (gap < r.end) out->push_back({gap, r.end});
    }
    return absl::OkStatus();
  }
  bool is_icu() const override { return false; }

 private:
  MatchFn match_;
};

// `\s`/`\S` mean White_Space in the tokenizer regexes; ICU's do not include
// U+000B and U+0085, so spell the property out.
std::string ToIcuSyntax(std::string_view regex) {
  std::string out;
  out.reserve(regex.size() + 32);
  for (size_t i = 0; i < regex.size(); ++i) {
    if (regex[i] == '\\' && i + 1 < regex.size()) {
      const char next = regex[i + 1];
      if (next == 's') {
        out += "\\p{White_Space}";
      } else if (next == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += regex[i];
        out += next;
      }
      ++i;
      continue;
    }
    out += regex[i];
  }
  return out;
}

class IcuStage : public RegexSplitter::Stage {
 public:
  static absl::StatusOr<std::unique_ptr<IcuStage>> Compile(std::string_view regex) {
    UErrorCode status = U_ZERO_ERROR;
    UParseError parse_error;
    const std::string icu_regex = ToIcuSyntax(regex);
    std::unique_ptr<icu::RegexPattern> pattern(icu::RegexPattern::compile(
        icu::UnicodeString::fromUTF8(icu_regex), 0, parse_error, status));
    if (U_FAILURE(status)) {
      return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex '", std::string(regex),
                                                     "' does not compile: ", u_errorName(status),
                                                     " at offset ", parse_error.offset));
    }
    return std::unique_ptr<IcuStage>(new IcuStage(std::move(pattern)));
  }

  absl::Status Split(std::string_view text, const DecodedText& t, const std::vector<TextRange>& in,
                     std::vector<TextRange>* out) const override {
    UErrorCode status = U_ZERO_ERROR;
    // Matches on the UTF-8 text directly: native indexes are byte offsets.
    UText* ut = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
    std::unique_ptr<icu::RegexMatcher> matcher(pattern_->matcher(status));
    if (U_SUCCESS(status)) matcher->reset(ut);
    auto to_index = [&t](int64_t byte_offset) {
      auto it =
          std::lower_bound(t.offsets.begin(), t.offsets.end(), static_cast<uint32_t>(byte_offset));
      return static_cast<uint32_t>(it - t.offsets.begin());
    };
    for (const TextRange& r : in) {
      if (U_FAILURE(status)) break;
      // Default opaque, anchoring bounds: lookarounds stop at the piece edge.
      matcher->region(t.offsets[r.begin], t.offsets[r.end], status);
      uint32_t gap = r.begin;
      while (U_SUCCESS(status) && matcher->find(status)) {
        const int64_t start = matcher->start64(status);
        const int64_t end = matcher->end64(status);
        if (U_FAILURE(status) || end == start) continue;
        const uint32_t b = to_index(start);
        const uint32_t e = to_index(end);
        if (gap < b) out->push_back({gap, b});
        out->push_back({b, e});
        gap = e;
      }
      if (gap < r.end) out->push_back({gap, r.end});
    }
    matcher.reset();
    utext_close(ut);
    if (U_FAILURE(status)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pre-tokenizer regex failed on this text: ", u_errorName(status)));
    }
    return absl::OkStatus();
  }
  bool is_icu() const override { return true; }

 private:
  explicit IcuStage(std::unique_ptr<icu::RegexPattern> pattern) : pattern_(std::move(pattern)) {}
  // Immutable after compile; matchers are created per call (they are not thread-safe).
  std::unique_ptr<icu::RegexPattern> pattern_;
};

MatchFn FindHandWritten(std::string_view regex) {
  if (regex == kGpt2Regex) return MatchGpt2;
  if (regex == kLlama3Regex) return MatchLlama3;
  if (regex == kQwen2Regex) return MatchQwen2;
  if (regex == kSingleDigitRegex) return MatchSingleDigit;
  return nullptr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(
    const std::vector<std::string>& regexes, Engine engine) {
  std::unique_ptr<RegexSplitter> splitter(new RegexSplitter());
  for (const std::string& regex : regexes) {
    MatchFn fn = engine == Engine::kAuto ? FindHandWritten(regex) : nullptr;
    if (fn != nullptr) {
      splitter->stages_.push_back(std::make_unique<HandWrittenStage>(fn));
      continue;
    }
    auto stage = IcuStage::Compile(regex);
    if (!stage.ok()) return stage.status();
    splitter->stages_.push_back(*std::move(stage));
  }
  return splitter;
}

RegexSplitter::~RegexSplitter() = default;

absl::Status RegexSplitter::Split(std::string_view text, const DecodedText& decoded,
                                  std::vector<TextRange>* pieces) const {
  pieces->clear();
  if (decoded.size() == 0) return absl::OkStatus();
  pieces->push_back({0, static_cast<uint32_t>(decoded.size())});
  std::vector<TextRange> next;
  for (const auto& stage : stages_) {
    next.clear();
    next.reserve(pieces->size() * 2);
    absl::Status status = stage->Split(text, decoded, *pieces, &next);
    if (!status.ok()) return status;
    pieces->swap(next);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> RegexSplitter::SplitToStrings(
    std::string_view text) const {
  if (unicode::ValidUtf8Length(text) != text.size()) {
    return absl::InvalidArgumentError("text is not valid UTF-8");
  }
  unicode::DecodedText decoded;
  unicode::DecodeUtf8(text, &decoded);
  std::vector<TextRange> ranges;
  absl::Status status = Split(text, decoded, &ranges);
  if (!status.ok()) return status;
  std::vector<std::string> out;
  out.reserve(ranges.size());
  for (const TextRange& r : ranges) {
    out.emplace_back(
        text.substr(decoded.offsets[r.begin], decoded.offsets[r.end] - decoded.offsets[r.begin]));
  }
  return out;
}

int RegexSplitter::n_icu_stages() const {
  return static_cast<int>(
      std::count_if(stages_.begin(), stages_.end(), [](const auto& s) { return s->is_icu(); }));
}

}  // namespace pdserve
