// The grammar compiler for a model's tokenizer: what each token decodes to
// (computed once per vocabulary), control tokens never allowed, the
// end-of-generation tokens as the stop tokens.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/grammar/grammar.h"
#include "engine/tokenizer/tokenizer.h"

namespace pdserve::grammar {

// n_vocab: the model's logit count (may exceed the tokenizer's; the extra
// ids are never allowed).
absl::StatusOr<std::unique_ptr<GrammarCompiler>> CompilerForTokenizer(const Tokenizer& tokenizer,
                                                                      int32_t n_vocab);

}  // namespace pdserve::grammar
