// Per-transfer authentication of the KV data path.
//
// The router issues a random 128-bit secret for every transfer and gives it
// to both ends (AdmitRequest.kv_secret, PrefillRequest.kv_secret). The
// sender proves that it knows the secret with HMAC-SHA256 tags:
//   Begin tag   = HMAC(secret, "pdserve-kv-begin-v2" | xfer u64 | n_layers u32 | budget_ms u32)
//   Trailer tag = HMAC(secret, "pdserve-kv-trailer-v2" | xfer u64 | trailer bytes)
// (integers little-endian). The receiver checks them against the secret of
// its own Post, so only a holder of the secret can open a transfer or
// deliver its token #1. What this does not cover: the layer bytes (an
// on-path attacker can still alter or read them; that needs TLS or a
// network policy), and a Begin replayed by an on-path attacker while the
// genuine sender is still connecting (the first verified Begin wins).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "transport/kv_transport.h"

namespace pdserve::transport {

inline constexpr size_t kAuthTagBytes = 32;

using AuthTag = std::array<uint8_t, kAuthTagBytes>;

// The tag a sender puts on its Begin.
AuthTag BeginTag(const TransferSecret& secret, TransferId xfer, uint32_t n_layers,
                 uint32_t budget_ms);
// The tag a sender appends to its trailer.
AuthTag TrailerTag(const TransferSecret& secret, TransferId xfer, std::string_view trailer);
// Constant-time comparison of two tags.
bool TagEquals(const AuthTag& a, const AuthTag& b);

// What a sender's Begin claims and proves, as the receiver sees it.
struct BeginProof {
  uint32_t budget_ms = 0;  // the budget as sent (covered by the tag)
  AuthTag tag{};
};

}  // namespace pdserve::transport
