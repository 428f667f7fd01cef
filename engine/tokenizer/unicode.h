// UTF-8 decoding and the few Unicode properties the tokenizer needs.
// Properties come from ICU (the same data its regex engine matches with), so
// a hand-written splitter and the regex it implements agree on every code
// point; there are no hand-made category tables here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pdserve::unicode {

// Property bits of one code point.
enum CodepointFlag : uint8_t {
  kLetter = 1 << 0,       // \p{L}
  kNumber = 1 << 1,       // \p{N}
  kPunctuation = 1 << 2,  // \p{P}
  kSymbol = 1 << 3,       // \p{S}
  kMark = 1 << 4,         // \p{M}
  kWhitespace = 1 << 5,   // White_Space: what \s means in the HF (Oniguruma) regexes
};
uint8_t CodepointFlags(char32_t cp);

// Decodes the code point at s[*i] and advances *i. On an ill-formed sequence
// returns -1 and advances past its maximal subpart (the unit that becomes one
// U+FFFD under the Unicode/WHATWG replacement rule).
int32_t NextCodepoint(std::string_view s, size_t* i);

// Length of the longest prefix of `s` that is valid UTF-8.
size_t ValidUtf8Length(std::string_view s);

// True when `s` (which starts at a sequence boundary and contains no complete
// character) is the beginning of a well-formed sequence that more bytes could
// complete, e.g. "\xE2\x82" (first two bytes of "€").
bool IsIncompleteUtf8(std::string_view s);

void AppendUtf8(char32_t cp, std::string* out);

// Valid UTF-8 decoded once for the pre-tokenizers: code points, their flags
// and byte offsets (offsets has one extra entry, the text length).
struct DecodedText {
  std::vector<char32_t> cps;
  std::vector<uint8_t> flags;
  std::vector<uint32_t> offsets;
  size_t size() const { return cps.size(); }
};
// `s` must be valid UTF-8 and shorter than 4 GiB.
void DecodeUtf8(std::string_view s, DecodedText* out);

// GPT-2's byte-level alphabet: each byte maps to a printable code point
// (printable Latin-1 bytes to themselves, the rest to U+0100 onwards).
char32_t ByteToUnicode(uint8_t b);
// The byte a code point of that alphabet stands for, or -1.
int UnicodeToByte(char32_t cp);

}  // namespace pdserve::unicode
