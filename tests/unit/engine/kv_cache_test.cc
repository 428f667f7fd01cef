#include "engine/kv_cache.h"

#include <numeric>

#include "engine/block_hash.h"
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

}  // namespace
}  // namespace pdserve
