// libFuzzer target for the tokenizer: any bytes must encode or fail with
// InvalidArgument (exactly when they are not UTF-8), never crash or hang;
// valid text must decode back to itself, stream as valid UTF-8 chunks, and
// split the same with the hand-written pre-tokenizers as with ICU's regexes.
//   build-tok-san/bin/tokenizer_fuzz -max_total_time=600 tests/fuzz/corpus/tokenizer
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_replace.h"
#include "common/check.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_pre.h"
#include "engine/tokenizer/unicode.h"
#include "engine/tokenizer/unicode_regex.h"

namespace {

using pdserve::EncodeOptions;
using pdserve::RegexSplitter;
using pdserve::StreamingDetokenizer;
using pdserve::TokenId;
using pdserve::Tokenizer;

struct Fixture {
  std::unique_ptr<Tokenizer> bpe;  // gpt-2: byte-level BPE
  std::unique_ptr<Tokenizer> starcoder;
  std::unique_ptr<Tokenizer> spm;  // llama: SentencePiece with byte fallback
  // {hand-written, ICU-only} splitters of each preset with a hand-written stage.
  std::vector<std::pair<std::unique_ptr<RegexSplitter>, std::unique_ptr<RegexSplitter>>> splitters;
};

std::unique_ptr<Tokenizer> Load(const char* name) {
  auto file =
      pdserve::gguf::GgufFile::Open(std::string(PDSERVE_TESTDATA_DIR) + "/tokenizer/" + name);
  PDS_CHECK(file.ok()) << file.status();
  auto tok = Tokenizer::FromGguf(**file);
  PDS_CHECK(tok.ok()) << tok.status();
  return *std::move(tok);
}

const Fixture& GetFixture() {
  static const Fixture* fixture = [] {
    auto* f = new Fixture();
    f->bpe = Load("ggml-vocab-gpt-2.gguf");
    f->starcoder = Load("ggml-vocab-starcoder.gguf");
    f->spm = Load("ggml-vocab-llama-spm.gguf");
    for (const char* name : {"gpt2", "starcoder", "llama-bpe", "qwen2"}) {
      const auto* preset = pdserve::FindPreTokenizerPreset(name);
      PDS_CHECK(preset != nullptr) << name;
      std::vector<std::string> regexes(preset->regexes.begin(), preset->regexes.end());
      auto fast = RegexSplitter::Create(regexes);
      auto icu = RegexSplitter::Create(regexes, RegexSplitter::Engine::kIcuOnly);
      PDS_CHECK(fast.ok() && icu.ok());
      f->splitters.emplace_back(*std::move(fast), *std::move(icu));
    }
    return f;
  }();
  return *fixture;
}

// Streams `ids` and checks every chunk is valid UTF-8; returns the text.
std::string Stream(const Tokenizer& tok, const std::vector<TokenId>& ids, bool render_special) {
  StreamingDetokenizer detok(&tok, render_special);
  std::string out;
  for (TokenId id : ids) {
    const std::string chunk = detok.Push(id);
    PDS_CHECK(pdserve::IsValidUtf8(chunk)) << "streamed chunk is not UTF-8";
    out += chunk;
  }
  const std::string rest = detok.Flush();
  PDS_CHECK(pdserve::IsValidUtf8(rest));
  PDS_CHECK_EQ(detok.pending_bytes(), 0u);
  return out + rest;
}

// Whether the byte-level vocabulary has a token for every byte of `text`
// (StarCoder's lacks bytes that never occur in its training data; those are
// dropped, so the round trip cannot hold).
bool CanSpell(const Tokenizer& tok, std::string_view text) {
  for (unsigned char b : text) {
    std::string ch;
    pdserve::unicode::AppendUtf8(pdserve::unicode::ByteToUnicode(b), &ch);
    if (tok.FindToken(ch) < 0) return false;
  }
  return true;
}

void CheckTokenizer(const Tokenizer& tok, std::string_view text, bool valid) {
  const bool spm = tok.model() == "llama";
  const bool spellable = spm || CanSpell(tok, text);
  for (bool parse_special : {false, true}) {
    auto ids =
        tok.Encode(text, EncodeOptions{.add_special = false, .parse_special = parse_special});
    if (!valid) {
      PDS_CHECK(ids.status().code() == absl::StatusCode::kInvalidArgument) << ids.status();
      continue;
    }
    PDS_CHECK(ids.ok()) << ids.status();
    for (TokenId id : *ids) PDS_CHECK(id >= 0 && id < tok.n_vocab()) << id;
    // SPM adds a space before the text and after every special token, so
    // its round trip holds when no special token is parsed; and it writes
    // spaces as U+2581, so a U+2581 in the text comes back as a space.
    if ((spm && parse_special) || !spellable) continue;
    std::string expected(text);
    if (spm) {
      expected = absl::StrReplaceAll(expected, {{"\xE2\x96\x81", " "}});
      if (!text.empty()) expected.insert(0, " ");
    }
    const std::string decoded = tok.Decode(*ids, /*render_special=*/true);
    PDS_CHECK(decoded == expected) << "round trip failed (parse_special=" << parse_special << ")";
    PDS_CHECK(Stream(tok, *ids, /*render_special=*/true) == expected);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Fixture& f = GetFixture();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid = pdserve::IsValidUtf8(text);

  CheckTokenizer(*f.bpe, text, valid);
  CheckTokenizer(*f.starcoder, text, valid);
  CheckTokenizer(*f.spm, text, valid);

  if (valid) {
    for (const auto& [fast, icu] : f.splitters) {
      auto a = fast->SplitToStrings(text);
      auto b = icu->SplitToStrings(text);
      PDS_CHECK(a.ok() && b.ok());
      PDS_CHECK(*a == *b) << "hand-written splitter disagrees with ICU";
    }
  }

  // The input as a stream of byte tokens (<0xNN> in the SPM vocabulary):
  // arbitrary, often broken, UTF-8 must still stream as valid chunks.
  std::vector<TokenId> byte_ids;
  for (size_t i = 0; i < size; ++i) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", data[i]);
    byte_ids.push_back(f.spm->FindToken(name));
  }
  const std::string streamed = Stream(*f.spm, byte_ids, false);
  if (valid) PDS_CHECK(streamed == text) << "byte tokens did not stream back the text";
  return 0;
}
