#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"
#include "tests/unit/kernels/test_util.h"

namespace pdserve::kernels {
namespace {

using testing::MaxRelErr;
using testing::RandomVector;

// A paged KV layer whose blocks are handed out in shuffled order.
struct TestCache {
  std::vector<uint8_t> bytes;
  KvLayerView kv;
  std::vector<int32_t> free_blocks;
  TestCache(DType type, int n_blocks, int block_size, int n_kv_heads, int head_dim) {
    kv.kv_type = type;
    kv.block_size = block_size;
    kv.n_kv_heads = n_kv_heads;
    kv.head_dim = head_dim;
    bytes.assign(n_blocks * kv.BlockBytes(), 0xff);  // NaN-filled: unread
    kv.base = bytes.data();
    free_blocks.resize(n_blocks);
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), std::mt19937(17));
  }
  std::vector<int32_t> Allocate(int32_t n_tokens) {
    std::vector<int32_t> table;
    for (int32_t i = 0; i < (n_tokens + kv.block_size - 1) / kv.block_size; ++i) {
      table.push_back(free_blocks.back());
      free_blocks.pop_back();
    }
    return table;
  }
};

struct SeqSpec {
  int32_t n_past, n_new;
};

// Fills each sequence's cache with its past tokens, then runs one batch of
// new tokens through StoreKv + PagedAttention and compares with the
// reference. Returns the max relative error.
double RunBatchOnIsa(DType kv_type, const std::vector<SeqSpec>& specs, int n_heads, int n_kv_heads,
                     int head_dim, int block_size, int nth) {
  TestCache cache(kv_type, 256, block_size, n_kv_heads, head_dim);
  const int64_t kv_dim = int64_t{n_kv_heads} * head_dim, q_dim = int64_t{n_heads} * head_dim;
  std::vector<std::vector<int32_t>> tables;
  std::vector<AttnSeq> seqs;
  int32_t rows = 0, max_ctx = 0;
  uint32_t seed = 1;
  for (const SeqSpec& s : specs) {
    tables.push_back(cache.Allocate(s.n_past + s.n_new));
    AttnSeq past{tables.back().data(), 0, s.n_past, 0};
    if (s.n_past > 0) {
      const std::vector<float> k = RandomVector(s.n_past * kv_dim, seed++);
      const std::vector<float> v = RandomVector(s.n_past * kv_dim, seed++);
      StoreKv(cache.kv, past, k.data(), v.data(), kv_dim);
    }
    seqs.push_back({tables.back().data(), s.n_past, s.n_new, rows});
    rows += s.n_new;
    max_ctx = std::max(max_ctx, s.n_past + s.n_new);
  }
  // This batch's K and V rows, stored with a row stride wider than kv_dim.
  const int64_t ld = kv_dim + 5;
  const std::vector<float> k = RandomVector(rows * ld, seed++), v = RandomVector(rows * ld, seed++);
  for (const AttnSeq& s : seqs)
    StoreKv(cache.kv, s, k.data() + s.row0 * ld, v.data() + s.row0 * ld, ld);
  const int64_t ldq = q_dim + 3, ldo = q_dim + 1;
  const std::vector<float> q = RandomVector(rows * ldq, seed++, 0.5f);
  std::vector<float> out(rows * ldo, 0.0f), ref(rows * ldo, 0.0f);
  std::vector<float> scratch(nth * AttentionScratchFloats(max_ctx));
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  ThreadPool pool(nth);
  pool.Run([&](int ith, int n) {
    PagedAttention(out.data(), ldo, q.data(), ldq, cache.kv, seqs.data(),
                   static_cast<int>(seqs.size()), n_heads, scale, max_ctx, scratch.data(), &pool,
                   ith, n);
  });
  PagedAttentionRef(ref.data(), ldo, q.data(), ldq, cache.kv, seqs.data(),
                    static_cast<int>(seqs.size()), n_heads, scale);
  for (float o : out) EXPECT_FALSE(std::isnan(o));
  return MaxRelErr(out.data(), ref.data(), out.size());
}

// Worst case over every ISA path this CPU runs.
double RunBatch(DType kv_type, const std::vector<SeqSpec>& specs, int n_heads, int n_kv_heads,
                int head_dim, int block_size, int nth) {
  double worst = 0;
  for (Isa isa : testing::SupportedIsas()) {
    testing::ScopedIsa scoped(isa);
    worst = std::max(worst,
                     RunBatchOnIsa(kv_type, specs, n_heads, n_kv_heads, head_dim, block_size, nth));
  }
  return worst;
}

// Float accumulation against double: ≤ 1e-4 of max |out|.
constexpr double kAttnMaxRel = 1e-4;

class AttentionTest : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionTest, DecodeManySequencesOfDifferentLengths) {
  const std::vector<SeqSpec> specs = {{0, 1}, {1, 1}, {15, 1}, {16, 1}, {17, 1}, {200, 1}, {63, 1}};
  for (int nth : {1, 2}) {
    EXPECT_LT(RunBatch(GetParam(), specs, 9, 3, 64, 16, nth), kAttnMaxRel) << nth;
  }
}

TEST_P(AttentionTest, DecodeOneSequenceSplitsHeadsAcrossThreads) {
  for (int nth : {2, 3}) {
    EXPECT_LT(RunBatch(GetParam(), {{100, 1}}, 9, 3, 64, 16, nth), kAttnMaxRel) << nth;
    EXPECT_LT(RunBatch(GetParam(), {{0, 1}, {33, 2}}, 9, 3, 64, 16, nth), kAttnMaxRel) << nth;
  }
}

TEST_P(AttentionTest, PrefillIsCausalOverChunkAndCachedPrefix) {
  for (int nth : {1, 2, 3}) {
    EXPECT_LT(RunBatch(GetParam(), {{0, 37}}, 9, 3, 64, 16, nth), kAttnMaxRel);
    EXPECT_LT(RunBatch(GetParam(), {{40, 24}, {0, 5}, {7, 1}}, 9, 3, 64, 16, nth), kAttnMaxRel);
  }
}

TEST_P(AttentionTest, OtherHeadShapes) {
  // MHA, wider heads, odd block sizes, a head size the SIMD path leaves to
  // the scalar one, and query chunks longer than one work item.
  EXPECT_LT(RunBatch(GetParam(), {{5, 3}, {30, 1}}, 4, 4, 128, 8, 2), kAttnMaxRel);
  EXPECT_LT(RunBatch(GetParam(), {{9, 9}}, 8, 2, 32, 5, 2), kAttnMaxRel);
  EXPECT_LT(RunBatch(GetParam(), {{3, 4}}, 2, 1, 40, 16, 2), kAttnMaxRel);
  EXPECT_LT(RunBatch(GetParam(), {{20, 70}}, 2, 2, 16, 16, 2), kAttnMaxRel);
  EXPECT_LT(RunBatch(GetParam(), {{6, 2}}, 2, 1, 272, 4, 2), kAttnMaxRel);  // past 256 dims
}

// A row's output must not depend on how rows were batched: one prefill of
// the whole prompt, a prefill in uneven chunks, and token-by-token decoding
// give bit-identical results (the engine relies on it for batched decoding,
// chunked prefill and preemption by recompute to agree).
TEST_P(AttentionTest, RowResultsDoNotDependOnBatching) {
  const int n_heads = 9, n_kv_heads = 3, hd = 64, n = 45;
  const int64_t kv_dim = n_kv_heads * hd, q_dim = n_heads * hd;
  const std::vector<float> k = RandomVector(n * kv_dim, 1), v = RandomVector(n * kv_dim, 2);
  const std::vector<float> q = RandomVector(n * q_dim, 3, 0.5f);
  const float scale = 0.125f;
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    testing::ScopedIsa scoped(isa);
    // Runs the prompt in the given chunks (with a decode-only neighbour
    // sequence in every batch) and returns the prompt rows' outputs.
    auto run = [&](const std::vector<int>& chunks) {
      TestCache cache(GetParam(), 16, 16, n_kv_heads, hd);
      const std::vector<int32_t> table = cache.Allocate(n), other = cache.Allocate(20);
      std::vector<float> out(n * q_dim);
      std::vector<float> scratch(2 * AttentionScratchFloats(64));
      StoreKv(cache.kv, {other.data(), 0, 20, 0}, k.data(), v.data(), kv_dim);
      int32_t done = 0;
      for (int c : chunks) {
        const AttnSeq seqs[2] = {{other.data(), 19, 1, 0}, {table.data(), done, c, 1}};
        std::vector<float> qb((1 + c) * q_dim), ob((1 + c) * q_dim);
        std::copy(q.begin(), q.begin() + q_dim, qb.begin());
        std::copy(q.begin() + done * q_dim, q.begin() + (done + c) * q_dim, qb.begin() + q_dim);
        StoreKv(cache.kv, seqs[1], k.data() + done * kv_dim, v.data() + done * kv_dim, kv_dim);
        for (int ith = 0; ith < 2; ++ith) {
          PagedAttention(ob.data(), q_dim, qb.data(), q_dim, cache.kv, seqs, 2, n_heads, scale, 64,
                         scratch.data(), nullptr, ith, 2);
        }
        std::copy(ob.begin() + q_dim, ob.end(), out.begin() + done * q_dim);
        done += c;
      }
      return out;
    };
    const std::vector<float> whole = run({n});
    EXPECT_EQ(run({2, 1, 30, 12}), whole);
    EXPECT_EQ(run(std::vector<int>(n, 1)), whole);
  }
}

INSTANTIATE_TEST_SUITE_P(KvTypes, AttentionTest, ::testing::Values(DType::kF16, DType::kF32),
                         [](const auto& info) { return std::string(GetDType(info.param).name); });

TEST(AttentionStoreTest, StoreKvWritesTheDocumentedLayout) {
  TestCache cache(DType::kF32, 4, 4, 2, 8);
  const std::vector<int32_t> table = {2, 0};
  AttnSeq seq{table.data(), 3, 2, 0};  // positions 3 (block 2) and 4 (block 0)
  const std::vector<float> k = RandomVector(2 * 16, 1), v = RandomVector(2 * 16, 2);
  StoreKv(cache.kv, seq, k.data(), v.data(), 16);
  auto at = [&](int block, int kv_idx, int head, int slot, int d) {
    const float* p = reinterpret_cast<const float*>(cache.kv.Block(block));
    return p[((kv_idx * 2 + head) * 4 + slot) * 8 + d];
  };
  EXPECT_EQ(at(2, 0, 1, 3, 5), k[0 * 16 + 8 + 5]);
  EXPECT_EQ(at(2, 1, 0, 3, 2), v[0 * 16 + 2]);
  EXPECT_EQ(at(0, 0, 0, 0, 7), k[1 * 16 + 7]);
  EXPECT_EQ(at(0, 1, 1, 0, 0), v[1 * 16 + 8]);
}

TEST(AttentionStoreTest, F16StoreRoundsToNearest) {
  TestCache cache(DType::kF16, 1, 4, 1, 4);
  const std::vector<int32_t> table = {0};
  const float k[4] = {1.0f, -2.5f, 3.14159f, 1e-3f}, v[4] = {0, 0, 0, 0};
  StoreKv(cache.kv, {table.data(), 0, 1, 0}, k, v, 4);
  const uint16_t* p = reinterpret_cast<const uint16_t*>(cache.kv.Block(0));
  for (int d = 0; d < 4; ++d) EXPECT_EQ(p[d], F32ToF16(k[d]));
}

}  // namespace
}  // namespace pdserve::kernels
