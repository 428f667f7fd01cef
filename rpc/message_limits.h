// gRPC receive limits sized to what each API legitimately carries, so a
// peer cannot make a server buffer and parse a 64 MiB message: anything
// larger is refused by gRPC itself with RESOURCE_EXHAUSTED before a handler
// runs.
#pragma once

#include <cstdint>

namespace pdserve::rpc {

// Room for everything beside the prompt: ids, sampling and stop parameters
// (16 stop strings of 256 bytes, 256 stop token ids), chat roles and framing.
inline constexpr int64_t kMessageOverheadBytes = 256 << 10;
// A token id in a packed repeated int32: at most 5 bytes (ids are >= 0).
inline constexpr int64_t kMaxBytesPerTokenId = 5;
// The node API never needs less than this (heartbeats, load reports, and the
// margin a router needs to send a whole-context prompt).
inline constexpr int64_t kMinNodeMessageBytes = 4 << 20;

// The client API (the router's gRPC port: Generation, plus the small Registry
// calls nodes make there): a prompt of `max_prompt_bytes` as text or chat, or
// `n_ctx` token ids, whichever is larger, plus the overhead.
int ClientApiMaxMessageBytes(int64_t max_prompt_bytes, int64_t n_ctx);

// The node API (Node service): a request carries up to `n_ctx` prompt tokens
// (a resubmitted request's generated tokens included); at least
// kMinNodeMessageBytes.
int NodeApiMaxMessageBytes(int64_t n_ctx);

}  // namespace pdserve::rpc
