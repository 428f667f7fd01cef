#include "engine/grammar/tokenizer_vocab.h"

#include <string>
#include <vector>

namespace pdserve::grammar {

absl::StatusOr<std::unique_ptr<GrammarCompiler>> CompilerForTokenizer(const Tokenizer& tokenizer,
                                                                      int32_t n_vocab) {
  std::vector<std::string> token_bytes(static_cast<size_t>(n_vocab));
  const int32_t n = std::min(n_vocab, tokenizer.n_vocab());
  for (TokenId t = 0; t < n; ++t) {
    // Control tokens stay empty: the grammar never allows them (the
    // end-of-generation ones come back as stop tokens).
    if (!tokenizer.IsSpecial(t)) token_bytes[t] = tokenizer.TokenToBytes(t);
  }
  std::vector<int32_t> stop_ids;
  for (TokenId t : tokenizer.eog_ids()) {
    if (t >= 0 && t < n_vocab) stop_ids.push_back(t);
  }
  return GrammarCompiler::Create(token_bytes, stop_ids);
}

}  // namespace pdserve::grammar
