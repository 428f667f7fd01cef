#include "engine/kv_cache.h"

#include <sys/mman.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "engine/text/block_hash.h"

namespace pdserve {

int64_t KvCacheConfig::LayerBlockBytes() const {
  const int64_t elem = dtype == kernels::DType::kF16 ? 2 : 4;
  return 2LL * n_kv_heads * block_size * head_dim * elem;
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const KvCacheConfig& c,
                                                         KvAllocator* allocator) {
  if (c.n_layers <= 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 || c.block_size <= 0 ||
      c.n_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv cache: bad configuration (layers ", c.n_layers, ", kv heads ", c.n_kv_heads,
        ", head_dim ", c.head_dim, ", block_size ", c.block_size, ", blocks ", c.n_blocks, ")"));
  }
  if (c.dtype != kernels::DType::kF16 && c.dtype != kernels::DType::kF32) {
    return absl::InvalidArgumentError("kv cache: dtype must be f16 or f32");
  }
  std::unique_ptr<KvCache> cache(new KvCache(c));
  const size_t per_layer = static_cast<size_t>(c.LayerBlockBytes()) * c.n_blocks;
  cache->mapping_bytes_ = per_layer * c.n_layers;
  void* p;
  if (allocator != nullptr) {
    absl::StatusOr<void*> got = allocator->Allocate(cache->mapping_bytes_);
    if (!got.ok()) return got.status();
    p = *got;
    cache->allocator_ = allocator;
  } else {
    // Committed and faulted in now (MAP_POPULATE): a block's first use
    // otherwise took a page fault per 4 KiB of every layer inside the step
    // that wrote it (6% of a node's prefill time until every block had been
    // used once), and an overcommitted host fails here rather than mid-request.
    p = mmap(nullptr, cache->mapping_bytes_, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "kv cache: cannot map ", cache->mapping_bytes_ >> 20, " MiB: ", std::strerror(errno)));
    }
  }
  cache->mapping_ = p;
  for (int32_t l = 0; l < c.n_layers; ++l) {
    cache->layer_base_.push_back(static_cast<uint8_t*>(p) + per_layer * l);
  }
  return cache;
}

KvCache::KvCache(const KvCacheConfig& config) : config_(config) {
  absl::MutexLock lock(&mu_);
  meta_.resize(config.n_blocks);
  free_.reserve(config.n_blocks);
  // Hand out low ids first (pop from the back).
  for (BlockId b = config.n_blocks - 1; b >= 0; --b) free_.push_back(b);
}

KvCache::~KvCache() {
  if (mapping_ == nullptr) return;
  if (allocator_ != nullptr) {
    allocator_->Free(mapping_, mapping_bytes_);
  } else {
    munmap(mapping_, mapping_bytes_);
  }
}

kernels::KvLayerView KvCache::Layer(int32_t layer) const {
  kernels::KvLayerView v;
  v.base = layer_base_[layer];
  v.kv_type = config_.dtype;
  v.block_size = config_.block_size;
  v.n_kv_heads = config_.n_kv_heads;
  v.head_dim = config_.head_dim;
  return v;
}

uint8_t* KvCache::BlockData(int32_t layer, BlockId block) const {
  return layer_base_[layer] + static_cast<int64_t>(block) * config_.LayerBlockBytes();
}

std::optional<std::vector<BlockId>> KvCache::Allocate(int32_t n) {
  absl::MutexLock lock(&mu_);
  if (n < 0 || static_cast<size_t>(n) > free_.size() + evictable_.size()) return std::nullopt;
  std::vector<BlockId> out;
  out.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    BlockId b;
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      b = evictable_.front();
      EvictLocked(b);
    }
    PDS_DCHECK(meta_[b].refs == 0);
    meta_[b].refs = 1;
    out.push_back(b);
  }
  return out;
}

void KvCache::EvictLocked(BlockId b) {
  BlockMeta& m = meta_[b];
  evictable_.erase(m.lru);
  auto it = index_.find(m.hash);
  if (it != index_.end() && it->second == b) index_.erase(it);
  m.hashed = false;
  m.tokens.clear();
}

void KvCache::Release(const std::vector<BlockId>& blocks) {
  absl::MutexLock lock(&mu_);
  for (BlockId b : blocks) {
    PDS_CHECK(b >= 0 && b < config_.n_blocks) << "block " << b;
    BlockMeta& m = meta_[b];
    PDS_CHECK_GT(m.refs, 0) << "double release of block " << b;
    if (--m.refs > 0) continue;
    if (m.hashed) {
      m.lru = evictable_.insert(evictable_.end(), b);
    } else {
      free_.push_back(b);
    }
  }
}

std::optional<std::vector<BlockId>> KvCache::Fork(const std::vector<BlockId>& table,
                                                  int32_t n_tokens, int32_t* n_shared) {
  const int32_t bs = config_.block_size;
  const int32_t n_full = n_tokens / bs;
  const bool partial = n_tokens % bs != 0;
  PDS_CHECK(n_tokens >= 0 && n_full + (partial ? 1 : 0) <= static_cast<int32_t>(table.size()))
      << "fork of " << n_tokens << " tokens from a table of " << table.size() << " blocks";
  // Host storage copies with memcpy; device storage only through its allocator.
  const bool can_copy = partial && (allocator_ == nullptr || allocator_->CanCopy());
  std::vector<BlockId> out;
  if (can_copy) {
    std::optional<std::vector<BlockId>> fresh = Allocate(1);
    if (!fresh) return std::nullopt;
    const BlockId src = table[n_full];
    const BlockId dst = (*fresh)[0];
    const size_t bytes = static_cast<size_t>(config_.LayerBlockBytes());
    for (int32_t l = 0; l < config_.n_layers; ++l) {
      if (allocator_ == nullptr) {
        std::memcpy(BlockData(l, dst), BlockData(l, src), bytes);
      } else {
        allocator_->Copy(BlockData(l, dst), BlockData(l, src), bytes);
      }
    }
    out.push_back(dst);
  }
  {
    absl::MutexLock lock(&mu_);
    for (int32_t i = 0; i < n_full; ++i) {
      BlockMeta& m = meta_[table[i]];
      PDS_CHECK_GT(m.refs, 0) << "fork of unreferenced block " << table[i];
      ++m.refs;
    }
  }
  out.insert(out.begin(), table.begin(), table.begin() + n_full);
  *n_shared = can_copy || !partial ? n_tokens : n_full * bs;
  return out;
}

BlockId KvCache::LookupLocked(uint64_t parent, uint64_t hash, const TokenId* tokens) const {
  auto it = index_.find(hash);
  if (it == index_.end()) return -1;
  const BlockMeta& m = meta_[it->second];
  if (m.parent != parent ||
      std::memcmp(m.tokens.data(), tokens, sizeof(TokenId) * config_.block_size) != 0) {
    return -1;  // 64-bit collision: treat as a miss
  }
  return it->second;
}

int32_t KvCache::MatchPrefix(const TokenId* tokens, int32_t max_tokens,
                             std::vector<BlockId>* table) {
  if (!config_.prefix_cache) return 0;
  const int32_t bs = config_.block_size;
  absl::MutexLock lock(&mu_);
  query_tokens_ += max_tokens;
  uint64_t parent = kRootBlockHash;
  int32_t matched = 0;
  while (matched + bs <= max_tokens) {
    const uint64_t h = HashBlock(parent, tokens + matched, bs);
    const BlockId b = LookupLocked(parent, h, tokens + matched);
    if (b < 0) break;
    BlockMeta& m = meta_[b];
    if (m.refs++ == 0) evictable_.erase(m.lru);
    table->push_back(b);
    parent = h;
    matched += bs;
  }
  hit_tokens_ += matched;
  return matched;
}

int32_t KvCache::CountCachedPrefixBlocks(const TokenId* tokens, int32_t n_tokens) const {
  if (!config_.prefix_cache) return 0;
  const int32_t bs = config_.block_size;
  absl::ReaderMutexLock lock(&mu_);
  uint64_t parent = kRootBlockHash;
  int32_t n = 0;
  for (int32_t i = 0; i + bs <= n_tokens; i += bs, ++n) {
    const uint64_t h = HashBlock(parent, tokens + i, bs);
    if (LookupLocked(parent, h, tokens + i) < 0) break;
    parent = h;
  }
  return n;
}

void KvCache::Publish(const std::vector<BlockId>& table, const TokenId* tokens, int32_t n_tokens) {
  if (!config_.prefix_cache) return;
  const int32_t bs = config_.block_size;
  absl::MutexLock lock(&mu_);
  uint64_t parent = kRootBlockHash;
  for (int32_t i = 0; (i + 1) * bs <= n_tokens && i < static_cast<int32_t>(table.size()); ++i) {
    const TokenId* bt = tokens + i * bs;
    const uint64_t h = HashBlock(parent, bt, bs);
    const BlockId b = table[i];
    BlockMeta& m = meta_[b];
    if (!m.hashed) {
      auto [it, inserted] = index_.try_emplace(h, b);
      if (inserted) {
        m.hashed = true;
        m.hash = h;
        m.parent = parent;
        m.tokens.assign(bt, bt + bs);
      }
    }
    parent = h;
  }
}

KvCacheStats KvCache::Stats() const {
  absl::ReaderMutexLock lock(&mu_);
  KvCacheStats s;
  s.total_blocks = config_.n_blocks;
  s.free_blocks = static_cast<int32_t>(free_.size() + evictable_.size());
  s.cached_blocks = static_cast<int32_t>(evictable_.size());
  s.prefix_query_tokens = query_tokens_;
  s.prefix_hit_tokens = hit_tokens_;
  return s;
}

int32_t KvCache::RefCount(BlockId block) const {
  absl::ReaderMutexLock lock(&mu_);
  return meta_[block].refs;
}

}  // namespace pdserve
