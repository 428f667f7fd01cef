// Splits text into pre-tokenizer pieces with a sequence of regexes, the way
// HF tokenizers' `Split(pattern, behavior=Isolated)` steps do: each regex
// splits every piece the previous one produced; the matches and the text
// between them both become pieces; lookarounds never see past a piece.
//
// The patterns the serving path uses most (GPT-2, Llama 3, Qwen 2, single
// digits) have hand-written matchers; any other pattern runs on ICU's regex
// engine, which is also the reference the hand-written matchers are tested
// against (RegexSplitter::Engine::kIcuOnly).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer/unicode.h"

namespace pdserve {

// Regexes with hand-written matchers. `\s` means White_Space, as in the
// Oniguruma regexes of HF tokenizers (ICU's own `\s` omits U+000B and U+0085,
// so patterns are rewritten to `\p{White_Space}` before ICU compiles them).
inline constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama 3's pattern with the case-insensitive contractions spelled out
// ASCII-only, as llama.cpp does (ICU's (?i) would also fold U+017F to 's').
inline constexpr std::string_view kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen 2: Llama 3 with one digit per piece.
inline constexpr std::string_view kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kSingleDigitRegex = R"(\p{N})";

// A piece: code point indices [begin, end) into a DecodedText.
struct TextRange {
  uint32_t begin;
  uint32_t end;
};

class RegexSplitter {
 public:
  enum class Engine {
    kAuto,     // hand-written matchers where available, ICU otherwise
    kIcuOnly,  // ICU for every pattern (the reference)
  };
  // InvalidArgument when a regex does not compile.
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(
      const std::vector<std::string>& regexes, Engine engine = Engine::kAuto);
  ~RegexSplitter();

  // Splits valid UTF-8 `text`, already decoded into `decoded`, into pieces
  // covering it in order. Thread-safe. Fails only when ICU gives up on a match
  // (ResourceExhausted), which the patterns we ship never do.
  absl::Status Split(std::string_view text, const unicode::DecodedText& decoded,
                     std::vector<TextRange>* pieces) const;

  // Convenience for tests and tools: the pieces as strings.
  absl::StatusOr<std::vector<std::string>> SplitToStrings(std::string_view text) const;

  // Number of stages that run on ICU (tests check fast paths are taken).
  int n_icu_stages() const;

  class Stage;

 private:
  RegexSplitter() = default;
  std::vector<std::unique_ptr<Stage>> stages_;
};

}  // namespace pdserve
