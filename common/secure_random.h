// Unpredictable bytes from the kernel's CSPRNG (getrandom(2)), for anything
// a peer must not guess: request ids, transfer ids, per-transfer secrets.
// Never use <random> engines for these: mt19937_64's state can be recovered
// from its outputs.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pdserve {

// Fills out[0, bytes) with CSPRNG output. getrandom only fails before the
// kernel's pool is seeded or on a bad pointer; both abort with a message.
void SecureRandomBytes(void* out, size_t bytes);

// A uniformly random 64-bit value, never 0 (0 means "unset" in protos).
uint64_t SecureRandomU64();

// bytes random bytes as lowercase hex (2 * bytes characters).
std::string SecureRandomHex(size_t bytes);

// A 128-bit secret as raw bytes (16 characters, any value).
std::string SecureRandomSecret128();

// Equality of two secrets whose running time depends only on their lengths,
// not on where they differ.
bool SecretEquals(std::string_view a, std::string_view b);

}  // namespace pdserve
