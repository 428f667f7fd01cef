// Paged KV cache: a pool of fixed-size token blocks with refcounts, and a
// prefix cache of full blocks keyed by a hash chain of their tokens.
//
// Storage: for each layer, one array of n_blocks blocks laid out as
// kernels::KvLayerView documents ([2][n_kv_heads][block_size][head_dim] of
// F16 or F32). One layer's share of one block is one contiguous span of
// BlockBytes() bytes — the unit the transport ships between nodes.
//
// Block metadata (allocation, refcounts, prefix index) is thread-safe;
// block contents are written only by the owner of a block's only reference.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/cpu/attention.h"

namespace pdserve {

using BlockId = int32_t;

struct KvCacheConfig {
  int32_t n_layers = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 16;
  kernels::DType dtype = kernels::DType::kF16;  // kF16 or kF32
  int32_t n_blocks = 0;
  bool prefix_cache = true;

  // Bytes of one block in one layer.
  int64_t LayerBlockBytes() const;
  // Bytes of one block across all layers.
  int64_t BlockBytes() const { return LayerBlockBytes() * n_layers; }
};

// Provides KV storage (host memory when none is given; device memory for a
// GPU backend). Pointers it returns are only dereferenced by the backend's
// kernels and the transport.
class KvAllocator {
 public:
  virtual ~KvAllocator() = default;
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr, size_t bytes) = 0;
  // Copying within the storage (a copy-on-write fork's partial block). An
  // allocator that cannot: forks share full blocks only and the engine
  // recomputes the partial block's tokens.
  virtual bool CanCopy() const { return false; }
  virtual void Copy(void* /*dst*/, const void* /*src*/, size_t /*bytes*/) {}
};

struct KvCacheStats {
  int32_t total_blocks = 0;
  int32_t free_blocks = 0;    // allocatable now (includes evictable cached blocks)
  int32_t cached_blocks = 0;  // unreferenced blocks kept for prefix reuse
  int64_t prefix_query_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  double usage() const {
    return total_blocks == 0 ? 0.0 : 1.0 - static_cast<double>(free_blocks) / total_blocks;
  }
};

class KvCache {
 public:
  // Allocates the storage (by default an anonymous mmap whose pages are
  // committed on first write). Errors when the configuration is invalid or
  // memory is short.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const KvCacheConfig& config,
                                                         KvAllocator* allocator = nullptr);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheConfig& config() const { return config_; }
  kernels::KvLayerView Layer(int32_t layer) const;
  // Start of layer `layer`'s share of block `block`: LayerBlockBytes() bytes.
  uint8_t* BlockData(int32_t layer, BlockId block) const;
  // The one allocation every block lives in (device memory with a GPU
  // allocator): what a same-host KV transport exports (transport/ipc_sender.h).
  const void* storage() const { return mapping_; }
  size_t storage_bytes() const { return mapping_bytes_; }

  // n new blocks with refcount 1, or nullopt when there is no room (evicts
  // unreferenced prefix-cache blocks, least recently used first).
  std::optional<std::vector<BlockId>> Allocate(int32_t n);
  // Drops one reference to each block. Full blocks registered in the prefix
  // index stay there, evictable, once unreferenced.
  void Release(const std::vector<BlockId>& blocks);

  // Copy-on-write fork of a block table whose first n_tokens positions hold
  // KV (n > 1 samples of one prompt). Full blocks are shared: one more
  // reference each, never written again by anyone. A last, partially filled
  // block is the one the fork writes next, so it gets a fresh block with a
  // copy of its contents. nullopt when there is no block for that copy
  // (nothing taken). *n_shared: positions whose KV the returned table holds:
  // n_tokens, or n_tokens rounded down to a block when the storage cannot be
  // copied here (a device allocator without Copy; the caller recomputes).
  std::optional<std::vector<BlockId>> Fork(const std::vector<BlockId>& table, int32_t n_tokens,
                                           int32_t* n_shared);

  // Appends to `table` the cached blocks matching the longest prefix of
  // tokens[0, max_tokens) made of full blocks, taking a reference to each;
  // returns how many tokens they cover. Counts queries and hits.
  int32_t MatchPrefix(const TokenId* tokens, int32_t max_tokens, std::vector<BlockId>* table);
  // Registers the full blocks of table covering tokens[0, n_tokens) whose
  // KV has been computed, so later requests can reuse them.
  void Publish(const std::vector<BlockId>& table, const TokenId* tokens, int32_t n_tokens);
  // Number of leading full blocks of `tokens` already cached (no references
  // taken, no stats counted): for load reports and tests.
  int32_t CountCachedPrefixBlocks(const TokenId* tokens, int32_t n_tokens) const;

  KvCacheStats Stats() const;
  int32_t RefCount(BlockId block) const;

 private:
  explicit KvCache(const KvCacheConfig& config);

  struct BlockMeta {
    int32_t refs = 0;
    bool hashed = false;
    uint64_t hash = 0;
    uint64_t parent = 0;
    std::vector<TokenId> tokens;       // block's tokens when hashed (collision guard)
    std::list<BlockId>::iterator lru;  // position in evictable_ when refs == 0 && hashed
  };
  void EvictLocked(BlockId b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  BlockId LookupLocked(uint64_t parent, uint64_t hash, const TokenId* tokens) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const KvCacheConfig config_;
  std::vector<uint8_t*> layer_base_;  // (n_layers) -> (n_blocks, LayerBlockBytes)
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  KvAllocator* allocator_ = nullptr;  // null: mapping_ is an anonymous mmap

  mutable absl::Mutex mu_;
  std::vector<BlockMeta> meta_ ABSL_GUARDED_BY(mu_);
  std::vector<BlockId> free_ ABSL_GUARDED_BY(mu_);     // unreferenced, not hashed
  std::list<BlockId> evictable_ ABSL_GUARDED_BY(mu_);  // unreferenced, hashed; LRU front
  absl::flat_hash_map<uint64_t, BlockId> index_ ABSL_GUARDED_BY(mu_);
  int64_t query_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t hit_tokens_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace pdserve
