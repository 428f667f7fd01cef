// Internals shared by attention*.cc.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace pdserve::kernels::internal {

// Row of K (kv_idx 0) or V (kv_idx 1) of KV head h at position pos.
inline const uint8_t* KvRow(const KvLayerView& kv, const AttnSeq& seq, int kv_idx, int h,
                            int32_t pos) {
  const uint8_t* block = kv.Block(seq.block_table[pos / kv.block_size]);
  const int64_t row =
      (static_cast<int64_t>(kv_idx) * kv.n_kv_heads + h) * kv.block_size + pos % kv.block_size;
  return block + row * kv.head_dim * kv.ElemBytes();
}

// Whether PagedAttentionAvx512 handles this head size.
inline bool Avx512AttentionSupports(const KvLayerView& kv, int n_heads) {
  return kv.head_dim % 16 == 0 && kv.head_dim <= 256 && n_heads / kv.n_kv_heads <= 64;
}

// Same contract as PagedAttention; scratch is this thread's share.
void PagedAttentionAvx512(float* out, int64_t ldo, const float* q, int64_t ldq,
                          const KvLayerView& kv, const AttnSeq* seqs, int n_seqs, int n_heads,
                          float scale, float* scratch, int ith, int nth);

// The portable tiled path (attention_tiled.inc) built for AVX2; returns
// false (doing nothing) for head sizes it does not handle.
bool PagedAttentionAvx2(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                        const AttnSeq* seqs, int n_seqs, int n_heads, float scale, float* scratch,
                        int ith, int nth);

// Converts n floats to IEEE halves (round to nearest even) with F16C.
void F32ToF16RowF16c(uint16_t* y, const float* x, int64_t n);

}  // namespace pdserve::kernels::internal
