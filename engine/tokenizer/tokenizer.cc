#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/tokenizer/tokenizer_bpe.h"
#include "engine/tokenizer/tokenizer_vocab.h"
#include "engine/tokenizer/unicode.h"
#include "engine/tokenizer/unicode_regex.h"

namespace pdserve {

using tokenizer_internal::BpeMerger;
using tokenizer_internal::MergeScratch;
using tokenizer_internal::SpmMerger;
using tokenizer_internal::Vocab;
using tokenizer_internal::VocabType;
namespace ti = tokenizer_internal;

namespace {

// Longer texts are refused rather than processed: offsets are 32-bit and no
// request needs this much.
constexpr size_t kMaxEncodeBytes = size_t{1} << 30;
constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 ▁

// Finds special tokens in text: leftmost match first, longest at a position
// (the semantics of HF's added-token matcher).
class SpecialMatcher {
 public:
  void Add(std::string_view text, TokenId id) {
    int32_t node = 0;
    for (unsigned char b : text) {
      auto [it, inserted] = edges_.try_emplace(Key(node, b), static_cast<int32_t>(tokens_.size()));
      if (inserted) tokens_.push_back(-1);
      node = it->second;
    }
    tokens_[node] = id;
    first_byte_[static_cast<unsigned char>(text[0])] = true;
  }
  bool MayStartAt(unsigned char b) const { return first_byte_[b]; }
  // The longest accepted token starting at text[pos]: {end, id}.
  template <typename Accept>
  std::optional<std::pair<size_t, TokenId>> LongestAt(std::string_view text, size_t pos,
                                                      Accept accept) const {
    std::optional<std::pair<size_t, TokenId>> best;
    int32_t node = 0;
    for (size_t q = pos; q < text.size(); ++q) {
      auto it = edges_.find(Key(node, static_cast<unsigned char>(text[q])));
      if (it == edges_.end()) break;
      node = it->second;
      if (tokens_[node] >= 0 && accept(tokens_[node])) best = {q + 1, tokens_[node]};
    }
    return best;
  }

 private:
  static uint64_t Key(int32_t node, unsigned char b) { return (uint64_t(node) << 8) | b; }
  std::vector<TokenId> tokens_ = {-1};  // per trie node; node 0 is the root
  absl::flat_hash_map<uint64_t, int32_t> edges_;
  std::array<bool, 256> first_byte_{};
};

// The bytes a vocab entry decodes to.
std::string DecodePiece(const Vocab& v, TokenId id) {
  const std::string& text = v.texts[id];
  const uint8_t attr = v.attrs[id];
  // Special and user-defined tokens are literal text in both models.
  if (attr & (ti::kAttrControl | ti::kAttrUnknown | ti::kAttrUserDefined)) return text;
  if (attr & ti::kAttrByte) {
    // "<0xNN>"
    unsigned value = 0;
    if (text.size() == 6 && text.compare(0, 3, "<0x") == 0 && text[5] == '>' &&
        absl::SimpleHexAtoi(text.substr(3, 2), &value)) {
      return std::string(1, static_cast<char>(value));
    }
  }
  if (!(attr & (ti::kAttrNormal | ti::kAttrByte))) return "";  // unused or undefined
  if (v.type == VocabType::kSpm) {
    std::string out;
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, kSpmSpace.size(), kSpmSpace) == 0) {
        out += ' ';
        i += kSpmSpace.size();
      } else {
        out += text[i++];
      }
    }
    return out;
  }
  // Byte-level: each code point of GPT-2's alphabet is one byte; anything
  // else (added tokens stored as plain text) passes through.
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t start = i;
    const int32_t cp = unicode::NextCodepoint(text, &i);
    const int byte = cp < 0 ? -1 : unicode::UnicodeToByte(static_cast<char32_t>(cp));
    if (byte >= 0) {
      out.push_back(static_cast<char>(byte));
    } else {
      out.append(text, start, i - start);
    }
  }
  return out;
}

}  // namespace

struct Tokenizer::Impl {
  std::unique_ptr<Vocab> vocab;
  std::optional<BpeMerger> bpe;
  std::optional<SpmMerger> spm;
  std::unique_ptr<RegexSplitter> splitter;  // BPE only
  SpecialMatcher specials;
  std::vector<std::string> pieces;        // decoded bytes per token
  std::vector<bool> render_only_special;  // control/unknown: shown only when asked

  absl::Status EncodeText(std::string_view text, bool after_special, MergeScratch* scratch,
                          unicode::DecodedText* decoded, std::vector<TextRange>* words,
                          std::vector<TokenId>* out) const;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const gguf::GgufFile& file) {
  auto impl = std::make_unique<Impl>();
  PDS_ASSIGN_OR_RETURN(impl->vocab, ti::LoadVocab(file));
  const Vocab& v = *impl->vocab;
  if (v.type == VocabType::kBpe) {
    if (!file.Has("tokenizer.ggml.merges")) {
      return absl::InvalidArgumentError("byte-level BPE vocabulary has no tokenizer.ggml.merges");
    }
    PDS_ASSIGN_OR_RETURN(std::vector<std::string_view> merges,
                         file.GetStringArray("tokenizer.ggml.merges"));
    impl->bpe.emplace(BpeMerger::Create(v, merges));
    std::vector<std::string> regexes(v.preset->regexes.begin(), v.preset->regexes.end());
    PDS_ASSIGN_OR_RETURN(impl->splitter, RegexSplitter::Create(regexes));
  } else {
    impl->spm.emplace(v);
  }
  impl->pieces.reserve(v.size());
  impl->render_only_special.resize(v.size());
  for (TokenId id = 0; id < v.size(); ++id) {
    impl->pieces.push_back(DecodePiece(v, id));
    impl->render_only_special[id] = (v.attrs[id] & (ti::kAttrControl | ti::kAttrUnknown)) != 0;
    // Only texts that are whole UTF-8 can be matched without splitting a character.
    const std::string& text = v.texts[id];
    if ((v.attrs[id] & ti::kAttrSpecial) && !text.empty() && IsValidUtf8(text)) {
      impl->specials.Add(text, id);
    }
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::Status Tokenizer::Impl::EncodeText(std::string_view text, bool after_special,
                                         MergeScratch* scratch, unicode::DecodedText* decoded,
                                         std::vector<TextRange>* words,
                                         std::vector<TokenId>* out) const {
  if (spm) {
    // SentencePiece sees a leading space (llama.cpp adds one at the start and
    // after every special token) and spaces written as U+2581.
    std::string escaped;
    escaped.reserve(text.size() + 8);
    if (vocab->add_space_prefix && after_special) escaped += kSpmSpace;
    for (char c : text) {
      if (c == ' ') {
        escaped += kSpmSpace;
      } else {
        escaped += c;
      }
    }
    spm->Encode(escaped, scratch, out);
    return absl::OkStatus();
  }
  unicode::DecodeUtf8(text, decoded);
  PDS_RETURN_IF_ERROR(splitter->Split(text, *decoded, words));
  for (const TextRange& w : *words) {
    const uint32_t begin = decoded->offsets[w.begin];
    const uint32_t end = decoded->offsets[w.end];
    bpe->EncodeWord(text.substr(begin, end - begin), scratch, out);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TokenId>> Tokenizer::Encode(std::string_view text,
                                                       const EncodeOptions& options) const {
  if (text.size() > kMaxEncodeBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text of ", text.size(), " bytes is longer than the limit of ", kMaxEncodeBytes, " bytes"));
  }
  const size_t valid = unicode::ValidUtf8Length(text);
  if (valid != text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 (bad byte 0x",
                     absl::Hex(static_cast<unsigned char>(text[valid]), absl::kZeroPad2),
                     " at offset ", valid, ")"));
  }
  const Vocab& v = *impl_->vocab;
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 4);
  if (options.add_special && v.add_bos) out.push_back(v.bos);

  MergeScratch scratch;
  unicode::DecodedText decoded;
  std::vector<TextRange> words;
  // Control and unknown tokens are recognised only when asked; user-defined
  // ones always (as llama.cpp and HF do).
  auto accept = [&v, &options](TokenId id) {
    return options.parse_special || (v.attrs[id] & (ti::kAttrControl | ti::kAttrUnknown)) == 0;
  };
  const std::span<const ByteRange> literal = options.literal_ranges;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (literal[k].begin > literal[k].end || literal[k].end > text.size() ||
        (k > 0 && literal[k].begin < literal[k - 1].end)) {
      return absl::InvalidArgumentError(
          absl::StrCat("literal range ", k, " [", literal[k].begin, ", ", literal[k].end,
                       ") is out of order or outside the text of ", text.size(), " bytes"));
    }
  }
  // Inside a literal range only what plain text may hold (user-defined tokens).
  auto accept_literal = [&v](TokenId id) {
    return (v.attrs[id] & (ti::kAttrControl | ti::kAttrUnknown)) == 0;
  };
  size_t next_literal = 0;    // the first literal range that does not end before pos
  bool after_special = true;  // the start of text counts as a boundary
  size_t raw_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    while (next_literal < literal.size() && literal[next_literal].end <= pos) ++next_literal;
    const bool in_literal = next_literal < literal.size() && literal[next_literal].begin <= pos;
    // A token must end by here: it may not cross into or out of a literal range.
    const size_t match_limit = next_literal == literal.size() ? text.size()
                               : in_literal                   ? literal[next_literal].end
                                                              : literal[next_literal].begin;
    if (!impl_->specials.MayStartAt(static_cast<unsigned char>(text[pos]))) {
      ++pos;
      continue;
    }
    const std::string_view window = text.substr(0, match_limit);
    auto match = in_literal ? impl_->specials.LongestAt(window, pos, accept_literal)
                            : impl_->specials.LongestAt(window, pos, accept);
    if (!match) {
      ++pos;
      continue;
    }
    if (raw_begin < pos) {
      PDS_RETURN_IF_ERROR(impl_->EncodeText(text.substr(raw_begin, pos - raw_begin), after_special,
                                            &scratch, &decoded, &words, &out));
    }
    out.push_back(match->second);
    after_special = true;
    pos = raw_begin = match->first;
  }
  if (raw_begin < text.size()) {
    PDS_RETURN_IF_ERROR(
        impl_->EncodeText(text.substr(raw_begin), after_special, &scratch, &decoded, &words, &out));
  }
  if (options.add_special && v.add_eos) out.push_back(v.eos);
  return out;
}

std::string Tokenizer::TokenToBytes(TokenId id, bool render_special) const {
  if (!impl_->vocab->InRange(id)) return "";
  if (impl_->render_only_special[id] && !render_special) return "";
  return impl_->pieces[id];
}

std::string Tokenizer::Decode(const std::vector<TokenId>& ids, bool render_special) const {
  std::string out;
  for (TokenId id : ids) {
    if (!impl_->vocab->InRange(id)) continue;
    if (impl_->render_only_special[id] && !render_special) continue;
    out += impl_->pieces[id];
  }
  return out;
}

int32_t Tokenizer::n_vocab() const { return impl_->vocab->size(); }
std::string_view Tokenizer::model() const { return impl_->vocab->model; }
std::string_view Tokenizer::pre() const { return impl_->vocab->pre; }
TokenId Tokenizer::bos_id() const { return impl_->vocab->bos; }
TokenId Tokenizer::eos_id() const { return impl_->vocab->eos; }
TokenId Tokenizer::eot_id() const { return impl_->vocab->eot; }
TokenId Tokenizer::eom_id() const { return impl_->vocab->eom; }
TokenId Tokenizer::unk_id() const { return impl_->vocab->unk; }
bool Tokenizer::add_bos() const { return impl_->vocab->add_bos; }
bool Tokenizer::add_eos() const { return impl_->vocab->add_eos; }
const std::vector<TokenId>& Tokenizer::eog_ids() const { return impl_->vocab->eog; }

bool Tokenizer::IsEog(TokenId id) const {
  const auto& eog = impl_->vocab->eog;
  return std::binary_search(eog.begin(), eog.end(), id);
}

bool Tokenizer::IsSpecial(TokenId id) const {
  return impl_->vocab->InRange(id) && (impl_->vocab->attrs[id] & ti::kAttrSpecial) != 0;
}

TokenId Tokenizer::FindToken(std::string_view text) const { return impl_->vocab->Find(text); }

std::string_view Tokenizer::TokenText(TokenId id) const {
  return impl_->vocab->InRange(id) ? std::string_view(impl_->vocab->texts[id]) : "";
}

std::string StreamingDetokenizer::Push(TokenId id) {
  pending_ += tokenizer_->TokenToBytes(id, render_special_);
  return TakeReady(/*flush=*/false);
}

std::string StreamingDetokenizer::Flush() { return TakeReady(/*flush=*/true); }

std::string StreamingDetokenizer::TakeReady(bool flush) {
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const std::string_view rest = std::string_view(pending_).substr(i);
    const size_t valid = unicode::ValidUtf8Length(rest);
    out.append(rest.data(), valid);
    i += valid;
    if (i == pending_.size()) break;
    // Hold a character that the next token may complete...
    if (!flush && unicode::IsIncompleteUtf8(std::string_view(pending_).substr(i))) break;
    // ...but bytes that can never become valid are replaced right away, one
    // U+FFFD per maximal ill-formed subpart.
    unicode::NextCodepoint(pending_, &i);
    out += "\xEF\xBF\xBD";
  }
  pending_.erase(0, i);
  return out;
}

}  // namespace pdserve
