// libFuzzer target for the structured-output schema checker and compiler
// (engine/grammar/grammar.h): any schema text a client sends must be
// refused with a Status or compile into a matcher whose mask always allows
// a token the matcher then accepts; never crash, hang or leak. The first
// input byte picks strict mode.
//   build-san/bin/grammar_schema_fuzz -max_total_time=600 tests/fuzz/corpus/grammar_schema
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/check.h"
#include "engine/grammar/grammar.h"

namespace {

namespace grammar = pdserve::grammar;

grammar::GrammarCompiler* Compiler() {
  static grammar::GrammarCompiler* c = [] {
    std::vector<std::string> vocab = {"{",   "}",    "[",     "]",    "\"",       ":", ",",
                                      " ",   "a",    "b",     "0",    "1",        "-", ".",
                                      "e",   "true", "false", "null", "\\",       "u", "\"a\"",
                                      "{\"", "\":",  "12",    "x",    "\xc3\xa9", ""};
    auto made = grammar::GrammarCompiler::Create(vocab, {static_cast<int32_t>(vocab.size()) - 1});
    PDS_CHECK(made.ok()) << made.status();
    return made->release();
  }();
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool strict = data[0] & 1;
  const std::string schema(reinterpret_cast<const char*>(data + 1), size - 1);
  if (!grammar::CheckSchema(schema, strict).ok()) return 0;
  auto m = Compiler()->NewMatcher({grammar::GrammarKind::kJsonSchema, schema});
  if (!m.ok()) return 0;  // checked schemas may still be unsatisfiable
  const int32_t n_vocab = Compiler()->n_vocab();
  std::vector<uint32_t> mask(grammar::BitmaskWords(n_vocab));
  for (int step = 0; step < 16 && !(*m)->IsTerminated(); ++step) {
    PDS_CHECK((*m)->FillMask(mask.data()).ok());
    int32_t pick = -1;
    for (int32_t t = 0; t < n_vocab; ++t) {
      if (grammar::MaskAllows(mask.data(), t)) {
        pick = t;
        if ((data[step % size] & 1) == 0) break;  // the input steers the walk
      }
    }
    if (pick < 0) break;  // the small vocabulary may not spell what the schema needs
    PDS_CHECK((*m)->Accept(pick).ok()) << "the mask allowed token " << pick;
  }
  return 0;
}
