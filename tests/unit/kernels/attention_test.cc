#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention_internal.h"
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

// One batch: each sequence's cache filled with its past tokens, this
// batch's new K and V stored, queries, and the reference output. Runs the
// kernel on the active ISA under any thread count and split options.
class AttnCase {
 public:
  AttnCase(DType kv_type, const std::vector<SeqSpec>& specs, int n_heads, int n_kv_heads,
           int head_dim, int block_size)
      : cache_(kv_type, BlocksFor(specs, block_size), block_size, n_kv_heads, head_dim),
        n_heads_(n_heads),
        q_dim_(int64_t{n_heads} * head_dim) {
    const int64_t kv_dim = int64_t{n_kv_heads} * head_dim;
    int32_t rows = 0;
    uint32_t seed = 1;
    for (const SeqSpec& s : specs) {
      tables_.push_back(cache_.Allocate(s.n_past + s.n_new));
      AttnSeq past{tables_.back().data(), 0, s.n_past, 0};
      if (s.n_past > 0) {
        const std::vector<float> k = RandomVector(s.n_past * kv_dim, seed++);
        const std::vector<float> v = RandomVector(s.n_past * kv_dim, seed++);
        StoreKv(cache_.kv, past, k.data(), v.data(), kv_dim);
      }
      seqs_.push_back({tables_.back().data(), s.n_past, s.n_new, rows});
      rows += s.n_new;
      max_ctx_ = std::max(max_ctx_, s.n_past + s.n_new);
    }
    // This batch's K and V rows, stored with a row stride wider than kv_dim.
    const int64_t ld = kv_dim + 5;
    const std::vector<float> k = RandomVector(rows * ld, seed++),
                             v = RandomVector(rows * ld, seed++);
    for (const AttnSeq& s : seqs_)
      StoreKv(cache_.kv, s, k.data() + s.row0 * ld, v.data() + s.row0 * ld, ld);
    q_ = RandomVector(rows * ldq(), seed++, 0.5f);
    ref_.assign(rows * ldo(), 0.0f);
    PagedAttentionRef(ref_.data(), ldo(), q_.data(), ldq(), cache_.kv, seqs_.data(), n_seqs(),
                      n_heads_, Scale());
  }

  // Through PagedAttention, as the engine calls it.
  std::vector<float> Run(int nth) const {
    std::vector<float> out(ref_.size(), 0.0f);
    std::vector<float> scratch(nth * AttentionScratchFloats(max_ctx_));
    ThreadPool pool(nth);
    pool.Run([&](int ith, int n) {
      PagedAttention(out.data(), ldo(), q_.data(), ldq(), cache_.kv, seqs_.data(), n_seqs(),
                     n_heads_, Scale(), max_ctx_, scratch.data(), &pool, ith, n);
    });
    return out;
  }

  // With explicit split options and room for every partial; sets the number
  // of decode rows that were split.
  std::vector<float> RunWith(const internal::AttnOptions& opt, int nth, int* split_rows) const {
    std::vector<float> out(ref_.size(), 0.0f);
    std::vector<float> scratch(nth * AttentionScratchFloats(max_ctx_));
    int64_t partial_floats = 0;
    for (const AttnSeq& s : seqs_) {
      const int64_t n_seg = (s.n_past + s.n_new + opt.segment_keys - 1) / opt.segment_keys;
      partial_floats += n_heads_ * n_seg * internal::PartialFloats(cache_.kv.head_dim);
    }
    std::vector<float> partials(partial_floats);
    std::vector<int> split(nth);
    ThreadPool pool(nth);
    pool.Run([&](int ith, int n) {
      split[ith] = internal::PagedAttentionWith(
          opt, out.data(), ldo(), q_.data(), ldq(), cache_.kv, seqs_.data(), n_seqs(), n_heads_,
          Scale(), max_ctx_, scratch.data(), partials.data(), partial_floats, &pool, ith, n);
    });
    for (int n : split) EXPECT_EQ(n, split[0]) << "threads disagree on the plan";
    *split_rows = split[0];
    return out;
  }

  double MaxRelErrVsRef(const std::vector<float>& out) const {
    for (float o : out) EXPECT_FALSE(std::isnan(o));
    return MaxRelErr(out.data(), ref_.data(), out.size());
  }

 private:
  static int BlocksFor(const std::vector<SeqSpec>& specs, int block_size) {
    int n = 0;
    for (const SeqSpec& s : specs) n += (s.n_past + s.n_new + block_size - 1) / block_size;
    return n + 8;
  }
  int64_t ldq() const { return q_dim_ + 3; }
  int64_t ldo() const { return q_dim_ + 1; }
  int n_seqs() const { return static_cast<int>(seqs_.size()); }
  float Scale() const { return 1.0f / std::sqrt(static_cast<float>(cache_.kv.head_dim)); }

  TestCache cache_;
  int n_heads_;
  int64_t q_dim_;
  std::vector<std::vector<int32_t>> tables_;
  std::vector<AttnSeq> seqs_;
  int32_t max_ctx_ = 0;
  std::vector<float> q_, ref_;
};

// Runs one batch through PagedAttention on the active ISA and compares with
// the reference. Returns the max relative error.
double RunBatchOnIsa(DType kv_type, const std::vector<SeqSpec>& specs, int n_heads, int n_kv_heads,
                     int head_dim, int block_size, int nth) {
  const AttnCase c(kv_type, specs, n_heads, n_kv_heads, head_dim, block_size);
  return c.MaxRelErrVsRef(c.Run(nth));
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

// Split-K decoding: every decode row's context in segments spread over the
// threads, their partials folded after a barrier. Contexts around block
// (16) and segment boundaries, 1 to 3 threads, and segments of the default
// size, of 7 keys (more segments than blocks, none aligned to a block) and
// of 1 key.
TEST_P(AttentionTest, SplitDecodeMatchesReferenceAcrossBoundaries) {
  for (const int32_t n_ctx : {1, 15, 16, 17, 100, 1000, 4097}) {
    const AttnCase c(GetParam(), {{n_ctx - 1, 1}}, 9, 3, 64, 16);
    for (Isa isa : testing::SupportedIsas()) {
      testing::ScopedIsa scoped(isa);
      for (const int32_t seg : {internal::kSegmentKeys, 7, 1}) {
        if (seg == 1 && n_ctx > 100) continue;  // 1-key segments: slow, nothing new
        for (int nth : {1, 2, 3}) {
          SCOPED_TRACE(::testing::Message() << IsaName(isa) << " ctx " << n_ctx << " segment "
                                            << seg << " threads " << nth);
          int split = 0;
          const std::vector<float> out =
              c.RunWith({seg, internal::SplitMode::kAlways}, nth, &split);
          EXPECT_EQ(split, 1);
          EXPECT_LT(c.MaxRelErrVsRef(out), kAttnMaxRel);
        }
      }
    }
  }
}

// Three decoding sequences of different contexts, MHA and GQA 3, head sizes
// 64 and 128; then decode rows split beside a prefill chunk that is not.
TEST_P(AttentionTest, SplitDecodeBatchMatchesReference) {
  const std::vector<SeqSpec> batch = {{4096, 1}, {16, 1}, {999, 1}};
  for (const auto& [n_heads, n_kv_heads] : {std::pair{4, 4}, std::pair{9, 3}}) {
    for (const int hd : {64, 128}) {
      const AttnCase c(GetParam(), batch, n_heads, n_kv_heads, hd, 16);
      for (Isa isa : testing::SupportedIsas()) {
        testing::ScopedIsa scoped(isa);
        for (const int32_t seg : {internal::kSegmentKeys, 16, 5}) {
          for (int nth : {1, 2, 3}) {
            SCOPED_TRACE(::testing::Message()
                         << IsaName(isa) << " heads " << n_heads << "/" << n_kv_heads << " hd "
                         << hd << " segment " << seg << " threads " << nth);
            int split = 0;
            const std::vector<float> out =
                c.RunWith({seg, internal::SplitMode::kAlways}, nth, &split);
            EXPECT_EQ(split, 3);
            EXPECT_LT(c.MaxRelErrVsRef(out), kAttnMaxRel);
          }
        }
      }
    }
  }
  const AttnCase mixed(GetParam(), {{40, 24}, {300, 1}, {0, 3}, {70, 1}}, 9, 3, 64, 16);
  for (Isa isa : testing::SupportedIsas()) {
    testing::ScopedIsa scoped(isa);
    for (int nth : {1, 2, 3}) {
      SCOPED_TRACE(::testing::Message() << IsaName(isa) << " mixed, threads " << nth);
      int split = 0;
      const std::vector<float> out = mixed.RunWith({32, internal::SplitMode::kAlways}, nth, &split);
      EXPECT_EQ(split, 2);
      EXPECT_LT(mixed.MaxRelErrVsRef(out), kAttnMaxRel);
    }
  }
}

// The fold runs in the same order whether or not a row was split, so
// splitting changes no bit of the output.
TEST_P(AttentionTest, SplitOutputIsBitIdenticalToUnsplit) {
  const AttnCase c(GetParam(), {{700, 1}, {63, 1}, {64, 1}, {129, 1}}, 9, 3, 64, 16);
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    testing::ScopedIsa scoped(isa);
    int split = 0;
    const std::vector<float> whole = c.RunWith({}, 1, &split);
    EXPECT_EQ(split, 0);
    for (int nth : {2, 3}) {
      EXPECT_EQ(c.RunWith({internal::kSegmentKeys, internal::SplitMode::kAlways}, nth, &split),
                whole)
          << nth;
      EXPECT_EQ(split, 4);
      EXPECT_EQ(c.RunWith({internal::kSegmentKeys, internal::SplitMode::kNever}, nth, &split),
                whole)
          << nth;
      EXPECT_EQ(split, 0);
    }
  }
}

// When PagedAttention splits on its own: decode rows at a context of a
// segment or more, fewer than four KV-head items per thread (one or two
// sequences of SmolLM2 on 2 threads), with room for the partials.
TEST_P(AttentionTest, AutoSplitsOnlyFewLongDecodeRows) {
  auto split_rows = [&](const std::vector<SeqSpec>& specs, int nth) {
    const AttnCase c(GetParam(), specs, 9, 3, 64, 16);
    int split = 0;
    c.RunWith({}, nth, &split);
    return split;
  };
  EXPECT_EQ(split_rows({{999, 1}}, 2), 1);
  EXPECT_EQ(split_rows({{internal::kMinSplitContext - 1, 1}}, 2), 1);
  EXPECT_EQ(split_rows({{internal::kMinSplitContext - 2, 1}}, 2), 0);  // too short
  EXPECT_EQ(split_rows({{999, 1}}, 1), 0);                             // one thread
  EXPECT_EQ(split_rows({{999, 1}, {20, 1}}, 2), 1);                    // 6 items on 2 threads
  EXPECT_EQ(split_rows({{999, 1}, {511, 1}}, 2), 2);
  EXPECT_EQ(split_rows({{999, 1}, {511, 1}, {700, 1}}, 2), 0);  // 9 items on 2 threads
  EXPECT_EQ(split_rows({{999, 1}, {20, 1}}, 4), 1);             // 6 items on 4 threads
  EXPECT_EQ(split_rows({{999, 1}, {0, 40}}, 5), 1);             // the prefill is not split
}

// A row's output does not depend on batching or splitting across segment
// boundaries: one prefill of a 200-token prompt (lanes kernel) and
// token-by-token decoding on 2 threads, each step split along the context
// (rows kernel, partials folded after a barrier), agree bit for bit.
TEST_P(AttentionTest, PrefillAndSplitDecodeAgreeBitForBit) {
  const int n_heads = 9, n_kv_heads = 3, hd = 64, n = 200;
  const int64_t kv_dim = n_kv_heads * hd, q_dim = n_heads * hd;
  const std::vector<float> k = RandomVector(n * kv_dim, 1), v = RandomVector(n * kv_dim, 2);
  const std::vector<float> q = RandomVector(n * q_dim, 3, 0.5f);
  const float scale = 0.125f;
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    testing::ScopedIsa scoped(isa);
    TestCache cache(GetParam(), 16, 16, n_kv_heads, hd);
    const std::vector<int32_t> table = cache.Allocate(n);
    StoreKv(cache.kv, {table.data(), 0, n, 0}, k.data(), v.data(), kv_dim);
    std::vector<float> scratch(2 * AttentionScratchFloats(n));
    std::vector<float> partials(n_heads * 4 * internal::PartialFloats(hd));  // 4 segments
    ThreadPool pool(2);
    std::vector<float> whole(n * q_dim), decoded(n * q_dim);
    pool.Run([&](int ith, int nth) {
      const AttnSeq seq{table.data(), 0, n, 0};
      PagedAttention(whole.data(), q_dim, q.data(), q_dim, cache.kv, &seq, 1, n_heads, scale, n,
                     scratch.data(), &pool, ith, nth);
    });
    int split_steps = 0;
    for (int32_t t = 0; t < n; ++t) {
      std::vector<int> split(2);
      pool.Run([&](int ith, int nth) {
        const AttnSeq seq{table.data(), t, 1, 0};
        split[ith] = internal::PagedAttentionWith(
            {}, decoded.data() + t * q_dim, q_dim, q.data() + t * q_dim, q_dim, cache.kv, &seq, 1,
            n_heads, scale, n, scratch.data(), partials.data(),
            static_cast<int64_t>(partials.size()), &pool, ith, nth);
      });
      split_steps += split[0];
    }
    EXPECT_EQ(split_steps, n - internal::kMinSplitContext + 1);
    EXPECT_EQ(decoded, whole);
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
