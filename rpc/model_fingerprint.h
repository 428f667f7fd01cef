// The identity of a model file that the router and its nodes compare: a
// node whose model differs from the router's (whose tokenizer the router
// uses) is refused at registration. Computed from the GGUF header alone
// (every metadata value, tokenizer included, and every tensor's name, type,
// shape and offset), so the router never reads the weights.
#pragma once

#include <string>

#include "engine/gguf/gguf.h"

namespace pdserve::rpc {

// "<architecture>/<n tensors>t/<tensor bytes>B/<16 hex digits of SHA-256>".
std::string ModelFingerprint(const gguf::GgufFile& file);

}  // namespace pdserve::rpc
