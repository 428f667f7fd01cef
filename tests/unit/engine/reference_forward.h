// A naive Llama forward pass for tests: whole float weights, no KV cache,
// no paging, no threads, double accumulation. Slow and obviously right.
#pragma once

#include <vector>

#include "engine/model.h"

namespace pdserve::testing {

// Logits (n_tokens, n_vocab) at every position of `tokens`.
std::vector<std::vector<float>> ReferenceForward(const Model& model,
                                                 const std::vector<TokenId>& tokens);

}  // namespace pdserve::testing
