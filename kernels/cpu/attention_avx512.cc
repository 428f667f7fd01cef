// AVX-512 paged attention with an online softmax over tiles of 16 keys.
// Work items are (sequence, KV head, chunk of query rows); an item converts
// each K/V tile to float once and reuses it for all its query heads (the
// GQA group times the chunk's rows), so F16 conversion is amortized and the
// KV cache is read once per item.
#include "kernels/cpu/attention_internal.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <cmath>
#include <cstring>

#include "kernels/cpu/simd_avx512.h"

namespace pdserve::kernels::internal {
namespace {

constexpr int kTile = 16;       // keys per tile: one score per lane
constexpr int kMaxQHeads = 64;  // query heads (rows x group) per item

struct Scratch {
  float* k;  // (kTile, head_dim)
  float* v;  // (kTile, head_dim)
  float* o;  // (kMaxQHeads, head_dim) unnormalized outputs
  float* m;  // (kMaxQHeads) running max
  float* l;  // (kMaxQHeads) running sum
  float* p;  // (kTile) this tile's probabilities
};

// Loads keys/values [p0, p0 + nk) of KV head h as floats; rows past nk are zero.
void LoadTile(float* dst, const KvLayerView& kv, const AttnSeq& seq, int kv_idx, int h, int32_t p0,
              int nk) {
  const int hd = kv.head_dim;
  for (int j = 0; j < kTile; ++j) {
    float* row = dst + j * hd;
    if (j >= nk) {
      std::memset(row, 0, hd * sizeof(float));
      continue;
    }
    const uint8_t* src = KvRow(kv, seq, kv_idx, h, p0 + j);
    for (int c = 0; c < hd; c += 16) {
      const __m512 x =
          kv.kv_type == DType::kF16
              ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * c)))
              : _mm512_loadu_ps(reinterpret_cast<const float*>(src) + c);
      _mm512_storeu_ps(row + c, x);
    }
  }
}

void ProcessItem(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                 const AttnSeq& seq, int h, int group, int32_t i0, int32_t i1, float scale,
                 const Scratch& s) {
  const int hd = kv.head_dim, nc = hd / 16;
  const int rows = i1 - i0, nqh = rows * group;
  for (int qh = 0; qh < nqh; ++qh) {
    s.m[qh] = -INFINITY;
    s.l[qh] = 0.0f;
  }
  std::memset(s.o, 0, sizeof(float) * nqh * hd);
  const int32_t ctx_end = seq.n_past + i1;  // keys the last row sees
  for (int32_t p0 = 0; p0 < ctx_end; p0 += kTile) {
    const int nk = ctx_end - p0 < kTile ? ctx_end - p0 : kTile;
    LoadTile(s.k, kv, seq, 0, h, p0, nk);
    LoadTile(s.v, kv, seq, 1, h, p0, nk);
    for (int r = 0; r < rows; ++r) {
      const int32_t pos = seq.n_past + i0 + r;
      if (pos < p0) continue;  // causal: this row sees none of the tile
      const int valid = pos - p0 + 1 < nk ? pos - p0 + 1 : nk;
      const __mmask16 kmask = static_cast<__mmask16>((1u << valid) - 1);
      for (int g = 0; g < group; ++g) {
        const int qh = r * group + g;
        const float* qv = q + (seq.row0 + i0 + r) * ldq + (h * group + g) * hd;  // (hd)
        __m512 qc[16];
        for (int c = 0; c < nc; ++c) {
          qc[c] = _mm512_mul_ps(_mm512_loadu_ps(qv + 16 * c), _mm512_set1_ps(scale));
        }
        __m512 part[kTile];
        for (int j = 0; j < kTile; ++j) {
          const float* kr = s.k + j * hd;
          __m512 a = _mm512_mul_ps(qc[0], _mm512_loadu_ps(kr));
          for (int c = 1; c < nc; ++c) a = _mm512_fmadd_ps(qc[c], _mm512_loadu_ps(kr + 16 * c), a);
          part[j] = a;
        }
        const __m512 sc =
            _mm512_mask_blend_ps(kmask, _mm512_set1_ps(-INFINITY), HorizontalSums16(part));
        const float m_old = s.m[qh];
        const float m_new = std::fmax(m_old, _mm512_reduce_max_ps(sc));
        const float corr = std::exp(m_old - m_new);  // 0 on the first tile
        const __m512 pv =
            _mm512_maskz_mov_ps(kmask, Exp512(_mm512_sub_ps(sc, _mm512_set1_ps(m_new))));
        s.l[qh] = s.l[qh] * corr + _mm512_reduce_add_ps(pv);
        s.m[qh] = m_new;
        _mm512_storeu_ps(s.p, pv);
        float* o = s.o + qh * hd;
        for (int c = 0; c < nc; ++c) {
          __m512 oc = _mm512_mul_ps(_mm512_loadu_ps(o + 16 * c), _mm512_set1_ps(corr));
          for (int j = 0; j < valid; ++j) {
            oc =
                _mm512_fmadd_ps(_mm512_set1_ps(s.p[j]), _mm512_loadu_ps(s.v + j * hd + 16 * c), oc);
          }
          _mm512_storeu_ps(o + 16 * c, oc);
        }
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int g = 0; g < group; ++g) {
      const int qh = r * group + g;
      const __m512 inv = _mm512_set1_ps(1.0f / s.l[qh]);
      float* dst = out + (seq.row0 + i0 + r) * ldo + (h * group + g) * hd;  // (hd)
      for (int c = 0; c < nc; ++c) {
        _mm512_storeu_ps(dst + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(s.o + qh * hd + 16 * c), inv));
      }
    }
  }
}

}  // namespace

void PagedAttentionAvx512(float* out, int64_t ldo, const float* q, int64_t ldq,
                          const KvLayerView& kv, const AttnSeq* seqs, int n_seqs, int n_heads,
                          float scale, float* scratch, int ith, int nth) {
  const int hd = kv.head_dim;
  const int group = n_heads / kv.n_kv_heads;
  Scratch s;
  s.k = scratch;
  s.v = s.k + kTile * hd;
  s.o = s.v + kTile * hd;
  s.m = s.o + kMaxQHeads * hd;
  s.l = s.m + kMaxQHeads;
  s.p = s.l + kMaxQHeads;
  const int32_t chunk = group >= kMaxQHeads ? 1 : kMaxQHeads / group;
  // Items interleave across threads so the causal triangle's cost spreads.
  int64_t item = 0;
  for (int si = 0; si < n_seqs; ++si) {
    const AttnSeq& seq = seqs[si];
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      for (int32_t i0 = 0; i0 < seq.n_new; i0 += chunk, ++item) {
        if (item % nth != ith) continue;
        const int32_t i1 = i0 + chunk < seq.n_new ? i0 + chunk : seq.n_new;
        ProcessItem(out, ldo, q, ldq, kv, seq, h, group, i0, i1, scale, s);
      }
    }
  }
}

}  // namespace pdserve::kernels::internal

#else

namespace pdserve::kernels::internal {
void PagedAttentionAvx512(float*, int64_t, const float*, int64_t, const KvLayerView&,
                          const AttnSeq*, int, int, float, float*, int, int) {}
}  // namespace pdserve::kernels::internal

#endif
