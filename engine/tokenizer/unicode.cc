#include "engine/tokenizer/unicode.h"

#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <array>
#include <cstring>

#include "common/check.h"
#include "engine/tokenizer/tokenizer.h"

namespace pdserve {
namespace unicode {
namespace {

uint8_t ComputeFlags(char32_t cp) {
  const UChar32 c = static_cast<UChar32>(cp);
  const uint32_t mask = U_GET_GC_MASK(c);
  uint8_t flags = 0;
  if (mask & U_GC_L_MASK) flags |= kLetter;
  if (mask & U_GC_N_MASK) flags |= kNumber;
  if (mask & U_GC_P_MASK) flags |= kPunctuation;
  if (mask & U_GC_S_MASK) flags |= kSymbol;
  if (mask & U_GC_M_MASK) flags |= kMark;
  if (u_isUWhiteSpace(c)) flags |= kWhitespace;
  return flags;
}

// Most text is in the first few blocks; cache ICU's answers for them.
constexpr char32_t kCachedCodepoints = 0x800;

const std::array<uint8_t, kCachedCodepoints>& FlagCache() {
  static const auto* cache = [] {
    auto* table = new std::array<uint8_t, kCachedCodepoints>();
    for (char32_t cp = 0; cp < kCachedCodepoints; ++cp) (*table)[cp] = ComputeFlags(cp);
    return table;
  }();
  return *cache;
}

struct ByteAlphabet {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // every code point of the alphabet is < 324
};

// GPT-2's bytes_to_unicode(): bytes that are printable Latin-1 keep their code
// point; the other 68 are numbered from U+0100 in byte order.
const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* alphabet = [] {
    auto* a = new ByteAlphabet();
    a->cp_to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? static_cast<char32_t>(b) : next++;
      a->byte_to_cp[b] = cp;
      PDS_CHECK_LT(static_cast<size_t>(cp), a->cp_to_byte.size());
      a->cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

}  // namespace

uint8_t CodepointFlags(char32_t cp) {
  if (cp < kCachedCodepoints) return FlagCache()[cp];
  return ComputeFlags(cp);
}

int32_t NextCodepoint(std::string_view s, size_t* i) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  UChar32 c;
  size_t pos = *i;
  U8_NEXT(p, pos, s.size(), c);
  *i = pos;
  return c;
}

size_t ValidUtf8Length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII runs are the common case; skip them eight bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t word;
      std::memcpy(&word, s.data() + i, 8);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= s.size()) break;
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t next = i;
    if (NextCodepoint(s, &next) < 0) return i;
    i = next;
  }
  return s.size();
}

bool IsIncompleteUtf8(std::string_view s) {
  if (s.empty()) return false;
  const auto lead = static_cast<uint8_t>(s[0]);
  if (lead < 0xC2 || lead > 0xF4) return false;
  const size_t needed = lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
  if (s.size() >= needed) return false;
  // The bytes so far must be a prefix of some well-formed sequence: decoding
  // stops at the end of the input, not at a bad byte.
  size_t i = 0;
  return NextCodepoint(s, &i) < 0 && i == s.size();
}

void AppendUtf8(char32_t cp, std::string* out) {
  char buf[4];
  size_t n = 0;
  bool error = false;
  U8_APPEND(reinterpret_cast<uint8_t*>(buf), n, 4, static_cast<UChar32>(cp), error);
  if (error) {
    out->append("\xEF\xBF\xBD");  // not a scalar value: U+FFFD
    return;
  }
  out->append(buf, n);
}

void DecodeUtf8(std::string_view s, DecodedText* out) {
  out->cps.clear();
  out->flags.clear();
  out->offsets.clear();
  out->cps.reserve(s.size());
  out->flags.reserve(s.size());
  out->offsets.reserve(s.size() + 1);
  size_t i = 0;
  while (i < s.size()) {
    const size_t start = i;
    int32_t cp = NextCodepoint(s, &i);
    PDS_DCHECK(cp >= 0) << "DecodeUtf8 needs valid UTF-8";
    if (cp < 0) cp = 0xFFFD;
    out->cps.push_back(static_cast<char32_t>(cp));
    out->flags.push_back(CodepointFlags(static_cast<char32_t>(cp)));
    out->offsets.push_back(static_cast<uint32_t>(start));
  }
  out->offsets.push_back(static_cast<uint32_t>(s.size()));
}

char32_t ByteToUnicode(uint8_t b) { return Alphabet().byte_to_cp[b]; }

int UnicodeToByte(char32_t cp) {
  const auto& a = Alphabet();
  return cp < a.cp_to_byte.size() ? a.cp_to_byte[cp] : -1;
}

}  // namespace unicode

bool IsValidUtf8(std::string_view s) { return unicode::ValidUtf8Length(s) == s.size(); }

size_t CompleteUtf8Prefix(std::string_view s) { return unicode::ValidUtf8Length(s); }

}  // namespace pdserve
