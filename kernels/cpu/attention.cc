#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention_internal.h"
#include "kernels/cpu/isa.h"

namespace pdserve::kernels {
namespace {

#include "kernels/cpu/attention_tiled.inc"

using internal::KvRow;

inline float LoadKv(const KvLayerView& kv, const uint8_t* row, int d) {
  if (kv.kv_type == DType::kF16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * d, 2);
    return F16ToF32(h);
  }
  float f;
  std::memcpy(&f, row + 4 * d, 4);
  return f;
}

}  // namespace

void StoreKv(const KvLayerView& kv, const AttnSeq& seq, const float* k, const float* v,
             int64_t ld) {
  for (int32_t i = 0; i < seq.n_new; ++i) {
    const int32_t pos = seq.n_past + i;
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      for (int kv_idx = 0; kv_idx < 2; ++kv_idx) {
        const float* src = (kv_idx == 0 ? k : v) + i * ld + h * kv.head_dim;  // (head_dim)
        uint8_t* dst = const_cast<uint8_t*>(KvRow(kv, seq, kv_idx, h, pos));
        if (kv.kv_type == DType::kF16 && ActiveIsa() != Isa::kScalar) {
          internal::F32ToF16RowF16c(reinterpret_cast<uint16_t*>(dst), src, kv.head_dim);
        } else if (kv.kv_type == DType::kF16) {
          for (int d = 0; d < kv.head_dim; ++d) {
            const uint16_t hv = F32ToF16(src[d]);
            std::memcpy(dst + 2 * d, &hv, 2);
          }
        } else {
          std::memcpy(dst, src, kv.head_dim * sizeof(float));
        }
      }
    }
  }
}

// Scalar path: scores (max_ctx) + one output row; AVX-512 path: queries and
// outputs of 64 query heads of up to 256 dims (three copies: transposed and
// not), two float K/V tiles and softmax state.
int64_t AttentionScratchFloats(int32_t max_ctx) { return int64_t{max_ctx} + 65536; }

void PagedAttention(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                    const AttnSeq* seqs, int n_seqs, int n_heads, float scale, int32_t max_ctx,
                    float* scratch, int ith, int nth) {
  float* mine = scratch + ith * AttentionScratchFloats(max_ctx);
  const Isa isa = ActiveIsa();
  if (isa == Isa::kAvx512 && internal::Avx512AttentionSupports(kv, n_heads)) {
    internal::PagedAttentionAvx512(out, ldo, q, ldq, kv, seqs, n_seqs, n_heads, scale, mine, ith,
                                   nth);
    return;
  }
  if (isa != Isa::kScalar && internal::PagedAttentionAvx2(out, ldo, q, ldq, kv, seqs, n_seqs,
                                                          n_heads, scale, mine, ith, nth)) {
    return;
  }
  if (TiledSupports(kv, n_heads)) {
    PagedAttentionTiled(out, ldo, q, ldq, kv, seqs, n_seqs, n_heads, scale, mine, ith, nth);
    return;
  }
  // Head sizes past 256: one (row, head) at a time over scores in scratch.
  float* scores = scratch + ith * AttentionScratchFloats(max_ctx);  // (max_ctx)
  float* acc = scores + max_ctx;                                    // (head_dim)
  const int group = n_heads / kv.n_kv_heads;
  int64_t item = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const AttnSeq& seq = seqs[s];
    for (int32_t i = 0; i < seq.n_new; ++i) {
      for (int h = 0; h < n_heads; ++h, ++item) {
        // Interleaved items balance the causal triangle across threads.
        if (item % nth != ith) continue;
        const int kvh = h / group;
        const float* qr = q + (seq.row0 + i) * ldq + h * kv.head_dim;  // (head_dim)
        const int32_t n_ctx = seq.n_past + i + 1;
        float max = -INFINITY;
        for (int32_t p = 0; p < n_ctx; ++p) {
          const uint8_t* kr = KvRow(kv, seq, 0, kvh, p);
          float dot = 0;
          for (int d = 0; d < kv.head_dim; ++d) dot += qr[d] * LoadKv(kv, kr, d);
          scores[p] = dot * scale;
          max = scores[p] > max ? scores[p] : max;
        }
        float sum = 0;
        for (int32_t p = 0; p < n_ctx; ++p) {
          scores[p] = std::exp(scores[p] - max);
          sum += scores[p];
        }
        for (int d = 0; d < kv.head_dim; ++d) acc[d] = 0;
        for (int32_t p = 0; p < n_ctx; ++p) {
          const uint8_t* vr = KvRow(kv, seq, 1, kvh, p);
          for (int d = 0; d < kv.head_dim; ++d) acc[d] += scores[p] * LoadKv(kv, vr, d);
        }
        float* o = out + (seq.row0 + i) * ldo + h * kv.head_dim;  // (head_dim)
        for (int d = 0; d < kv.head_dim; ++d) o[d] = acc[d] / sum;
      }
    }
  }
}

void PagedAttentionRef(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                       const AttnSeq* seqs, int n_seqs, int n_heads, float scale) {
  const int group = n_heads / kv.n_kv_heads;
  for (int s = 0; s < n_seqs; ++s) {
    const AttnSeq& seq = seqs[s];
    for (int32_t i = 0; i < seq.n_new; ++i) {
      const int32_t n_ctx = seq.n_past + i + 1;
      std::vector<double> p(n_ctx);
      for (int h = 0; h < n_heads; ++h) {
        const int kvh = h / group;
        const float* qr = q + (seq.row0 + i) * ldq + h * kv.head_dim;
        double max = -INFINITY;
        for (int32_t t = 0; t < n_ctx; ++t) {
          const uint8_t* kr = KvRow(kv, seq, 0, kvh, t);
          double dot = 0;
          for (int d = 0; d < kv.head_dim; ++d)
            dot += static_cast<double>(qr[d]) * LoadKv(kv, kr, d);
          p[t] = dot * scale;
          max = p[t] > max ? p[t] : max;
        }
        double sum = 0;
        for (int32_t t = 0; t < n_ctx; ++t) sum += (p[t] = std::exp(p[t] - max));
        for (int d = 0; d < kv.head_dim; ++d) {
          double o = 0;
          for (int32_t t = 0; t < n_ctx; ++t) o += p[t] * LoadKv(kv, KvRow(kv, seq, 1, kvh, t), d);
          out[(seq.row0 + i) * ldo + h * kv.head_dim + d] = static_cast<float>(o / sum);
        }
      }
    }
  }
}

}  // namespace pdserve::kernels
