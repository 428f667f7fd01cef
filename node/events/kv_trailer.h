// Token #1 on its way from the prefill node to the decode node: the
// v1::KvTrailer that rides in the KV transfer's last frame. The prefill node
// builds it from the engine's output; the decode node parses it from a peer
// it does not trust.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sequence.h"
#include "pdserve/v1/node.pb.h"

namespace pdserve::node {

// Token #1 of `out` (a prefill-only request's output with prefill_done):
// of each sample when n > 1.
v1::KvTrailer MakeKvTrailer(const SeqOutput& out);

// Token #1 of each sample from a transfer's trailer bytes. DataLoss when the
// bytes are not a KvTrailer, InvalidArgument when a token is outside
// [0, n_vocab) (it becomes an embedding row and sampler history).
absl::StatusOr<std::vector<TokenId>> ParseKvTrailer(std::string_view bytes, int32_t n_vocab);

}  // namespace pdserve::node
