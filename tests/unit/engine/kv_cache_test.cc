#include "engine/kv_cache.h"

#include <cstdlib>
#include <cstring>
#include <numeric>

#include "engine/text/block_hash.h"
#include "gtest/gtest.h"

namespace pdserve {
namespace {

std::unique_ptr<KvCache> MakeCache(int n_blocks, int block_size = 4, bool prefix = true) {
  KvCacheConfig c;
  c.n_layers = 2;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.block_size = block_size;
  c.n_blocks = n_blocks;
  c.prefix_cache = prefix;
  auto cache = KvCache::Create(c);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return std::move(*cache);
}

TEST(KvCache, LayoutAndSizes) {
  auto cache = MakeCache(8);
  // [2][n_kv_heads][block_size][head_dim] f16 per layer per block.
  EXPECT_EQ(cache->config().LayerBlockBytes(), 2 * 2 * 4 * 8 * 2);
  EXPECT_EQ(cache->config().BlockBytes(), 2 * cache->config().LayerBlockBytes());
  EXPECT_EQ(cache->BlockData(1, 3) - cache->BlockData(1, 0), 3 * cache->config().LayerBlockBytes());
  EXPECT_EQ(cache->Layer(1).BlockBytes(), cache->config().LayerBlockBytes());
}

TEST(KvCache, AllocateUntilNoRoomThenRelease) {
  auto cache = MakeCache(5);
  auto a = cache->Allocate(3);
  ASSERT_TRUE(a.has_value());
  EXPECT_FALSE(cache->Allocate(3).has_value());  // "no room" is a value
  EXPECT_EQ(cache->Stats().free_blocks, 2);
  auto b = cache->Allocate(2);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(cache->Stats().free_blocks, 0);
  EXPECT_DOUBLE_EQ(cache->Stats().usage(), 1.0);
  cache->Release(*a);
  cache->Release(*b);
  EXPECT_EQ(cache->Stats().free_blocks, 5);
}

TEST(KvCache, RejectsBadConfig) {
  KvCacheConfig c;
  EXPECT_FALSE(KvCache::Create(c).ok());
  c = {2, 2, 8, 4, kernels::DType::kQ4_0, 4, true};
  EXPECT_FALSE(KvCache::Create(c).ok());
}

TEST(KvCache, PrefixMatchReusesPublishedBlocksAndCountsHits) {
  auto cache = MakeCache(16);
  std::vector<TokenId> tokens(11);
  std::iota(tokens.begin(), tokens.end(), 100);
  auto blocks = *cache->Allocate(3);
  cache->Publish(blocks, tokens.data(), 11);  // two full blocks
  cache->Release(blocks);
  EXPECT_EQ(cache->Stats().cached_blocks, 2);
  EXPECT_EQ(cache->CountCachedPrefixBlocks(tokens.data(), 11), 2);

  std::vector<BlockId> table;
  EXPECT_EQ(cache->MatchPrefix(tokens.data(), 10, &table), 8);
  ASSERT_EQ(table.size(), 2u);
  EXPECT_EQ(table[0], blocks[0]);
  EXPECT_EQ(table[1], blocks[1]);
  EXPECT_EQ(cache->RefCount(blocks[0]), 1);
  EXPECT_EQ(cache->Stats().prefix_hit_tokens, 8);
  EXPECT_EQ(cache->Stats().prefix_query_tokens, 10);

  // A different second block only matches the first.
  std::vector<TokenId> other = tokens;
  other[5] = 7;
  std::vector<BlockId> t2;
  EXPECT_EQ(cache->MatchPrefix(other.data(), 10, &t2), 4);
  EXPECT_EQ(cache->RefCount(blocks[0]), 2);
  cache->Release(table);
  cache->Release(t2);
}

TEST(KvCache, EvictsCachedBlocksLeastRecentlyUsedFirst) {
  auto cache = MakeCache(4);
  std::vector<TokenId> a = {1, 2, 3, 4}, b = {5, 6, 7, 8};
  auto ba = *cache->Allocate(1);
  cache->Publish(ba, a.data(), 4);
  cache->Release(ba);
  auto bb = *cache->Allocate(1);
  cache->Publish(bb, b.data(), 4);
  cache->Release(bb);
  // 2 free + 2 cached: taking 3 evicts the older cached block (a) only.
  auto big = cache->Allocate(3);
  ASSERT_TRUE(big.has_value());
  EXPECT_EQ(cache->CountCachedPrefixBlocks(a.data(), 4), 0);
  EXPECT_EQ(cache->CountCachedPrefixBlocks(b.data(), 4), 1);
  cache->Release(*big);
}

TEST(KvCache, DisabledPrefixCacheNeverMatches) {
  auto cache = MakeCache(4, 4, false);
  std::vector<TokenId> a = {1, 2, 3, 4, 5};
  auto bl = *cache->Allocate(2);
  cache->Publish(bl, a.data(), 5);
  cache->Release(bl);
  std::vector<BlockId> t;
  EXPECT_EQ(cache->MatchPrefix(a.data(), 5, &t), 0);
  EXPECT_EQ(cache->Stats().free_blocks, 4);
}

TEST(BlockHash, ChainsParents) {
  const std::vector<int32_t> t = {1, 2, 3, 4, 1, 2, 3, 4};
  const auto h = HashFullBlocks(t.data(), 8, 4);
  ASSERT_EQ(h.size(), 2u);
  EXPECT_NE(h[0], h[1]);  // same tokens, different parent
  EXPECT_EQ(h[0], HashBlock(kRootBlockHash, t.data(), 4));
  EXPECT_EQ(h[1], HashBlock(h[0], t.data() + 4, 4));
}

// n > 1 samples: full blocks shared by reference, the partial last block
// copied (its contents too, in every layer); each table is released once.
TEST(KvCache, ForkSharesFullBlocksAndCopiesThePartialOne) {
  auto cache = MakeCache(8);        // block_size 4
  auto table = cache->Allocate(3);  // 10 tokens: 2 full blocks + 2 tokens
  ASSERT_TRUE(table.has_value());
  const size_t bytes = static_cast<size_t>(cache->config().LayerBlockBytes());
  for (int32_t l = 0; l < 2; ++l) {
    for (size_t i = 0; i < bytes; ++i) cache->BlockData(l, (*table)[2])[i] = (i * 7 + l) & 0xff;
  }
  int32_t n_shared = -1;
  auto fork = cache->Fork(*table, 10, &n_shared);
  ASSERT_TRUE(fork.has_value());
  EXPECT_EQ(n_shared, 10);
  ASSERT_EQ(fork->size(), 3u);
  EXPECT_EQ((*fork)[0], (*table)[0]);
  EXPECT_EQ((*fork)[1], (*table)[1]);
  EXPECT_NE((*fork)[2], (*table)[2]);
  EXPECT_EQ(cache->RefCount((*table)[0]), 2);
  EXPECT_EQ(cache->RefCount((*table)[1]), 2);
  EXPECT_EQ(cache->RefCount((*table)[2]), 1);
  EXPECT_EQ(cache->RefCount((*fork)[2]), 1);
  for (int32_t l = 0; l < 2; ++l) {
    EXPECT_EQ(std::memcmp(cache->BlockData(l, (*fork)[2]), cache->BlockData(l, (*table)[2]), bytes),
              0)
        << "layer " << l;
  }
  EXPECT_EQ(cache->Stats().free_blocks, 4);
  cache->Release(*table);
  EXPECT_EQ(cache->RefCount((*table)[0]), 1);  // the fork still holds the prompt
  EXPECT_EQ(cache->Stats().free_blocks, 5);
  cache->Release(*fork);
  EXPECT_EQ(cache->Stats().free_blocks, 8);
  for (BlockId b = 0; b < 8; ++b) EXPECT_EQ(cache->RefCount(b), 0) << b;
}

TEST(KvCache, ForkAtABlockBoundaryCopiesNothing) {
  auto cache = MakeCache(4);
  auto table = cache->Allocate(2);
  ASSERT_TRUE(table.has_value());
  int32_t n_shared = -1;
  auto fork = cache->Fork(*table, 8, &n_shared);
  ASSERT_TRUE(fork.has_value());
  EXPECT_EQ(*fork, *table);
  EXPECT_EQ(n_shared, 8);
  EXPECT_EQ(cache->Stats().free_blocks, 2);
  cache->Release(*fork);
  cache->Release(*table);
  EXPECT_EQ(cache->Stats().free_blocks, 4);
}

TEST(KvCache, ForkWithoutRoomForTheCopyTakesNothing) {
  auto cache = MakeCache(3);
  auto table = cache->Allocate(3);  // 10 tokens; no block left
  ASSERT_TRUE(table.has_value());
  int32_t n_shared = -1;
  EXPECT_FALSE(cache->Fork(*table, 10, &n_shared).has_value());
  for (BlockId b : *table) EXPECT_EQ(cache->RefCount(b), 1);
  cache->Release(*table);
  EXPECT_EQ(cache->Stats().free_blocks, 3);
}

// Storage the cache cannot copy (a device allocator without Copy): the fork
// shares the full blocks only and says how far its KV reaches.
class NoCopyAllocator : public KvAllocator {
 public:
  absl::StatusOr<void*> Allocate(size_t bytes) override { return std::calloc(bytes, 1); }
  void Free(void* ptr, size_t) override { std::free(ptr); }
};

TEST(KvCache, ForkOfUncopyableStorageSharesFullBlocksOnly) {
  KvCacheConfig c;
  c.n_layers = 2;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.block_size = 4;
  c.n_blocks = 6;
  NoCopyAllocator alloc;
  auto cache = KvCache::Create(c, &alloc);
  ASSERT_TRUE(cache.ok()) << cache.status();
  auto table = (*cache)->Allocate(3);
  ASSERT_TRUE(table.has_value());
  int32_t n_shared = -1;
  auto fork = (*cache)->Fork(*table, 10, &n_shared);
  ASSERT_TRUE(fork.has_value());
  EXPECT_EQ(n_shared, 8);
  EXPECT_EQ(fork->size(), 2u);
  (*cache)->Release(*fork);
  (*cache)->Release(*table);
  EXPECT_EQ((*cache)->Stats().free_blocks, 6);
}

}  // namespace
}  // namespace pdserve
