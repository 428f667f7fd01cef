// Attention over the paged KV cache, for prefill chunks (causal over the new
// tokens plus the cached prefix) and decode tokens of many sequences at once.
//
// KV layout, the unit that also travels between nodes: each layer owns an
// array of blocks; block b of a layer is
//     [2 (K then V)][n_kv_heads][block_size][head_dim]
// elements of kv_type (F16 by default, or F32), contiguous, so one layer's
// share of a block is a single span of BlockBytes() bytes.
//
// PagedAttention splits work into items of (sequence, KV head, chunk of up
// to 64 / group query rows), interleaved across threads; each item converts
// tiles of 16 keys to float once for all its query heads and runs an online
// softmax over them. A row's context is walked in segments of 64 keys at
// fixed positions: an online softmax within each segment, whose partial
// (max, sum of exponentials, unnormalized output) is folded into the row's
// result in position order with a log-sum-exp rescale.
//
// When a batch has few items per thread and long contexts (one decoding
// sequence: n_kv_heads items), each decode row's segments become work items
// of their own, spread over the threads ("flash-decoding"); after a barrier
// the partials are folded in the same order. A row's result is therefore
// bit-identical whether it was split or not, decoded or prefilled, alone or
// in a batch. With short contexts a single decoding sequence is split by
// query head instead.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace pdserve::kernels {

class ThreadPool;

struct KvLayerView {
  void* base = nullptr;         // (n_blocks, 2, n_kv_heads, block_size, head_dim)
  DType kv_type = DType::kF16;  // kF16 or kF32
  int32_t block_size = 16;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;

  int64_t ElemBytes() const { return kv_type == DType::kF16 ? 2 : 4; }
  int64_t BlockBytes() const { return 2LL * n_kv_heads * block_size * head_dim * ElemBytes(); }
  uint8_t* Block(int32_t block_id) const {
    return static_cast<uint8_t*>(base) + block_id * BlockBytes();
  }
};

// One sequence's share of a batch.
struct AttnSeq {
  const int32_t* block_table = nullptr;  // block ids in position order
  int32_t n_past = 0;                    // tokens already cached before this batch
  int32_t n_new = 0;                     // tokens of this sequence in the batch, >= 1
  int32_t row0 = 0;                      // row of its first new token in q / k / v / out
};

// Writes the new tokens' K and V rows (n_new, n_kv_heads * head_dim), at
// positions n_past .. n_past + n_new - 1, into the sequence's blocks.
// ld is the row stride of k and v in floats.
void StoreKv(const KvLayerView& kv, const AttnSeq& seq, const float* k, const float* v, int64_t ld);

// Floats of scratch each thread needs for contexts up to max_ctx tokens.
int64_t AttentionScratchFloats(int32_t max_ctx);

// out[row] = softmax(scale · q[row] · Kᵀ, causal) · V for each new token of
// each sequence, query head h reading KV head h / (n_heads / n_kv_heads).
// q and out: (n_rows, n_heads * head_dim) with row strides ldq and ldo.
// scratch: nth * AttentionScratchFloats(max_ctx) floats; the caller has
// already stored this batch's K and V. Thread ith of nth does its share.
// pool: the pool whose Run() makes this call on all nth threads; splitting
// along the context meets its threads at pool->Barrier() once. Null (the
// threads may then run one after another) splits nothing along the context.
void PagedAttention(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                    const AttnSeq* seqs, int n_seqs, int n_heads, float scale, int32_t max_ctx,
                    float* scratch, ThreadPool* pool, int ith, int nth);

// Naive reference: gathers K and V to float and loops in double.
void PagedAttentionRef(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                       const AttnSeq* seqs, int n_seqs, int n_heads, float scale);

}  // namespace pdserve::kernels
