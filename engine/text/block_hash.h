// Stable hashes of full KV blocks for prefix caching: block i's hash chains
// its parent's hash with the block's token ids, so equal hashes mean equal
// prefixes (up to 64-bit collisions, which the cache also guards against by
// comparing tokens). Stable across processes and machines, so the router can
// compute the same hashes for prefix-cache affinity without the model.
#pragma once

#include <cstdint>
#include <vector>

namespace pdserve {

inline constexpr uint64_t kRootBlockHash = 0x9e3779b97f4a7c15ull;

inline uint64_t MixHash(uint64_t x) {
  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

inline uint64_t HashBlock(uint64_t parent, const int32_t* tokens, int32_t n) {
  uint64_t h = MixHash(parent ^ 0x632be59bd9b4e019ull);
  for (int32_t i = 0; i < n; ++i) {
    h = MixHash(h ^ static_cast<uint32_t>(tokens[i]) ^ (static_cast<uint64_t>(i) << 32));
  }
  return h;
}

// Hashes of every full block of `tokens` (n / block_size of them).
inline std::vector<uint64_t> HashFullBlocks(const int32_t* tokens, int32_t n, int32_t block_size) {
  std::vector<uint64_t> out;
  uint64_t parent = kRootBlockHash;
  for (int32_t i = 0; i + block_size <= n; i += block_size) {
    parent = HashBlock(parent, tokens + i, block_size);
    out.push_back(parent);
  }
  return out;
}

}  // namespace pdserve
