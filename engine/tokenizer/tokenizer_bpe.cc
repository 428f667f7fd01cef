#include "engine/tokenizer/tokenizer_bpe.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_format.h"
#include "common/log.h"
#include "engine/tokenizer/unicode.h"

namespace pdserve::tokenizer_internal {
namespace {

using Symbol = MergeScratch::Symbol;
using Candidate = MergeScratch::Candidate;

// Heap orders: the top is the pair to merge next; ties go to the leftmost
// pair, as in HF tokenizers and llama.cpp.
bool BpeLess(const Candidate& a, const Candidate& b) {
  return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
}
bool SpmLess(const Candidate& a, const Candidate& b) {
  return a.score < b.score || (a.score == b.score && a.left > b.left);
}

// Merges `right` into `left` and unlinks it.
void MergeInto(std::vector<Symbol>& symbols, const Candidate& c) {
  Symbol& l = symbols[c.left];
  Symbol& r = symbols[c.right];
  l.id = c.merged_id;
  l.end = r.end;
  l.next = r.next;
  if (r.next >= 0) symbols[r.next].prev = c.left;
  r.id = MergeScratch::kDead;
}

}  // namespace

BpeMerger BpeMerger::Create(const Vocab& vocab, const std::vector<std::string_view>& merges) {
  BpeMerger m;
  m.vocab_ = &vocab;
  m.ignore_merges_ = vocab.preset != nullptr && vocab.preset->ignore_merges;
  // Texts that merges mention but the vocabulary lacks.
  absl::flat_hash_map<std::string, int32_t> extra_ids;
  int32_t next_extra = vocab.size();
  auto id_of = [&](std::string_view text) {
    TokenId id = vocab.Find(text);
    if (id >= 0) return id;
    auto [it, inserted] = extra_ids.emplace(text, next_extra);
    if (inserted) ++next_extra;
    return it->second;
  };

  m.merges_.reserve(merges.size());
  size_t malformed = 0;
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string_view line = merges[rank];
    // The separator is the first space after the first character, so a
    // left half that is itself a space still parses.
    const size_t sep = line.size() > 1 ? line.find(' ', 1) : std::string_view::npos;
    if (sep == std::string_view::npos || sep + 1 >= line.size()) {
      ++malformed;
      continue;
    }
    const std::string_view left = line.substr(0, sep);
    const std::string_view right = line.substr(sep + 1);
    merged.assign(left);
    merged.append(right);
    const int32_t left_id = id_of(left);
    const int32_t right_id = id_of(right);
    const int32_t merged_id = id_of(merged);
    // The first (lowest-ranked) entry for a pair wins.
    m.merges_.try_emplace(PairKey(left_id, right_id), Merge{static_cast<int32_t>(rank), merged_id});
  }
  if (malformed > 0) {
    PDS_LOG(WARNING) << "tokenizer: skipped " << malformed << " malformed merge entries";
  }
  for (int b = 0; b < 256; ++b) {
    std::string text;
    unicode::AppendUtf8(unicode::ByteToUnicode(static_cast<uint8_t>(b)), &text);
    m.byte_symbol_[b] = id_of(text);
    m.byte_text_[b] = std::move(text);
  }
  return m;
}

void BpeMerger::PushCandidate(MergeScratch* s, int32_t left, int32_t right) const {
  const int32_t left_id = s->symbols[left].id;
  const int32_t right_id = s->symbols[right].id;
  auto it = merges_.find(PairKey(left_id, right_id));
  if (it == merges_.end()) return;
  s->heap.push_back(Candidate{.rank = it->second.rank,
                              .score = 0,
                              .left = left,
                              .right = right,
                              .left_key = left_id,
                              .right_key = right_id,
                              .merged_id = it->second.merged_id});
  std::push_heap(s->heap.begin(), s->heap.end(), BpeLess);
}

void BpeMerger::EmitBytes(std::string_view bytes, std::vector<TokenId>* out) const {
  // A byte the vocabulary cannot spell is dropped, as llama.cpp and HF (with
  // no byte fallback) do. Not the unknown token: some vocabularies (StarCoder)
  // name <|endoftext|> as such, and an end marker must not appear mid-prompt.
  for (unsigned char b : bytes) {
    const int32_t id = byte_symbol_[b];
    if (vocab_->InRange(id)) out->push_back(id);
  }
}

void BpeMerger::EncodeWord(std::string_view word, MergeScratch* s,
                           std::vector<TokenId>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    s->text.clear();
    for (unsigned char b : word) s->text += byte_text_[b];
    const TokenId id = vocab_->Find(s->text);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  auto& symbols = s->symbols;
  symbols.clear();
  const int32_t n = static_cast<int32_t>(word.size());
  for (int32_t i = 0; i < n; ++i) {
    symbols.push_back(Symbol{.id = byte_symbol_[static_cast<unsigned char>(word[i])],
                             .prev = i - 1,
                             .next = i + 1 < n ? i + 1 : -1,
                             .begin = static_cast<uint32_t>(i),
                             .end = static_cast<uint32_t>(i + 1)});
  }
  s->heap.clear();
  for (int32_t i = 1; i < n; ++i) PushCandidate(s, i - 1, i);
  while (!s->heap.empty()) {
    std::pop_heap(s->heap.begin(), s->heap.end(), BpeLess);
    const Candidate c = s->heap.back();
    s->heap.pop_back();
    const Symbol& l = symbols[c.left];
    const Symbol& r = symbols[c.right];
    if (l.id != c.left_key || r.id != c.right_key || l.next != c.right) continue;  // stale
    MergeInto(symbols, c);
    if (symbols[c.left].prev >= 0) PushCandidate(s, symbols[c.left].prev, c.left);
    if (symbols[c.left].next >= 0) PushCandidate(s, c.left, symbols[c.left].next);
  }
  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    const Symbol& sym = symbols[i];
    if (vocab_->InRange(sym.id)) {
      out->push_back(sym.id);
    } else {
      EmitBytes(word.substr(sym.begin, sym.end - sym.begin), out);
    }
  }
}

namespace {
constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581

// Start of the UTF-8 character that ends at text[end] (exclusive).
size_t PrevCharStart(std::string_view text, size_t end) {
  size_t p = end - 1;
  while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
  return p;
}
}  // namespace

SpmMerger::SpmMerger(const Vocab& vocab) : vocab_(&vocab) {
  for (int b = 0; b < 256; ++b) byte_token_[b] = vocab.Find(absl::StrFormat("<0x%02X>", b));
  for (const std::string& t : vocab.texts) {
    max_token_bytes_ = std::max(max_token_bytes_, t.size());
    for (size_t p = t.find(kSpmSpace, 1); p != std::string::npos; p = t.find(kSpmSpace, p + 1)) {
      joins_space_.insert(t.substr(PrevCharStart(t, p), p - PrevCharStart(t, p)));
    }
  }
}

void SpmMerger::PushCandidate(std::string_view text, MergeScratch* s, int32_t left,
                              int32_t right) const {
  const Symbol& l = s->symbols[left];
  const Symbol& r = s->symbols[right];
  // No token is longer than the longest vocab entry: skip the lookup.
  if (r.end - l.begin > max_token_bytes_) return;
  const TokenId id = vocab_->Find(text.substr(l.begin, r.end - l.begin));
  if (id < 0) return;
  s->heap.push_back(Candidate{.rank = 0,
                              .score = vocab_->scores[id],
                              .left = left,
                              .right = right,
                              .left_key = static_cast<int32_t>(l.end),
                              .right_key = static_cast<int32_t>(r.end),
                              .merged_id = id});
  std::push_heap(s->heap.begin(), s->heap.end(), SpmLess);
}

void SpmMerger::EmitBytes(std::string_view bytes, std::vector<TokenId>* out) const {
  const bool spellable = std::all_of(bytes.begin(), bytes.end(), [this](char b) {
    return byte_token_[static_cast<unsigned char>(b)] >= 0;
  });
  if (spellable) {
    for (unsigned char b : bytes) out->push_back(byte_token_[b]);
  } else if (vocab_->unk >= 0) {
    out->push_back(vocab_->unk);  // one per character, as SentencePiece does
  }
}

void SpmMerger::Encode(std::string_view text, MergeScratch* s, std::vector<TokenId>* out) const {
  size_t begin = 0;
  for (size_t p = text.find(kSpmSpace, 1); p != std::string_view::npos;
       p = text.find(kSpmSpace, p + 1)) {
    const size_t prev = PrevCharStart(text, p);
    if (p > begin && !joins_space_.contains(absl::string_view(text.data() + prev, p - prev))) {
      EncodeSegment(text, begin, p, s, out);
      begin = p;
    }
  }
  EncodeSegment(text, begin, text.size(), s, out);
}

void SpmMerger::EncodeSegment(std::string_view text, size_t seg_begin, size_t seg_end,
                              MergeScratch* s, std::vector<TokenId>* out) const {
  if (seg_begin >= seg_end) return;
  auto& symbols = s->symbols;
  symbols.clear();
  // One symbol per code point; its id is looked up only if it stays unmerged.
  for (size_t i = seg_begin; i < seg_end;) {
    const size_t begin = i;
    if (unicode::NextCodepoint(text, &i) < 0 && i == begin) ++i;  // cannot happen on valid text
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{.id = -1,
                             .prev = index - 1,
                             .next = i < seg_end ? index + 1 : -1,
                             .begin = static_cast<uint32_t>(begin),
                             .end = static_cast<uint32_t>(i)});
  }
  s->heap.clear();
  const int32_t n = static_cast<int32_t>(symbols.size());
  for (int32_t i = 1; i < n; ++i) PushCandidate(text, s, i - 1, i);
  while (!s->heap.empty()) {
    std::pop_heap(s->heap.begin(), s->heap.end(), SpmLess);
    const Candidate c = s->heap.back();
    s->heap.pop_back();
    const Symbol& l = symbols[c.left];
    const Symbol& r = symbols[c.right];
    if (l.id == MergeScratch::kDead || r.id == MergeScratch::kDead || l.next != c.right ||
        static_cast<int32_t>(l.end) != c.left_key || static_cast<int32_t>(r.end) != c.right_key) {
      continue;  // stale
    }
    MergeInto(symbols, c);
    if (symbols[c.left].prev >= 0) PushCandidate(text, s, symbols[c.left].prev, c.left);
    if (symbols[c.left].next >= 0) PushCandidate(text, s, c.left, symbols[c.left].next);
  }
  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    const Symbol& sym = symbols[i];
    const std::string_view piece = text.substr(sym.begin, sym.end - sym.begin);
    const TokenId id = sym.id >= 0 ? sym.id : vocab_->Find(piece);
    if (id >= 0) {
      out->push_back(id);
    } else {
      EmitBytes(piece, out);  // an unmerged character: <0xNN> tokens, else the unknown token
    }
  }
}

}  // namespace pdserve::tokenizer_internal
