// AVX-512 paged attention with an online softmax over tiles of 16 keys,
// folded segment by segment (attention.h). Work items are (sequence, KV
// head, chunk of query rows); an item converts each K/V tile to float once
// and reuses it for all its query heads (the GQA group times the chunk's
// rows), so the F16 KV is read once per item. A split decode row's unit is
// one segment of one KV head, for all the group's query heads.
//
// Two inner kernels:
//  - lanes (prefill chunks): 16 query heads per register. With Qᵀ and Oᵀ
//    kept transposed, scores, softmax and P·V are all lane-wise FMAs with
//    broadcast K and V elements: no horizontal sums.
//  - rows (decode: one row, a GQA group of query heads): 16 keys per
//    register; per-key partial dot products meet in one transposing sum.
#include "kernels/cpu/attention_internal.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <climits>
#include <cmath>
#include <cstring>

#include "kernels/cpu/simd_avx512.h"
#include "kernels/cpu/thread_pool.h"

namespace pdserve::kernels::internal {
namespace {

constexpr int kTile = 16;       // keys per tile
constexpr int kSuper = 4;       // tiles whose decode scores are computed together
constexpr int kMaxQHeads = 64;  // query heads (rows x group) per item
constexpr int kMaxHeadDim = 256;

struct Scratch {
  float* k;   // (kTile, head_dim) K tile as floats; the rows kernel: kSuper
              // transposed K tiles, (kSuper, head_dim, kTile)
  float* v;   // (kTile, head_dim) V tile as floats
  float* qt;  // (kMaxQHeads / 16, head_dim, 16) scaled queries, transposed
  float* ot;  // (kMaxQHeads / 16, head_dim, 16) unnormalized outputs, transposed
  float* o;   // (kMaxQHeads, head_dim) unnormalized outputs (rows kernel)
  float* m;   // (kMaxQHeads) running max within the segment (rows kernel)
  float* l;   // (kMaxQHeads) running sum within the segment (rows kernel)
  float* p;   // (kMaxQHeads, kTile) probabilities of the tile
  float* am;  // (kMaxQHeads) folded max (rows kernel; its outputs are in ot)
  float* al;  // (kMaxQHeads) folded sum
  float* sc;  // (kMaxQHeads, kSuper, kTile) scores (rows kernel)
};

float ExpScalar(float x) { return _mm512_cvtss_f32(Exp512(_mm512_set1_ps(x))); }

// Folds one segment's partial (m, l, o) of a query head into its running
// result (am, al, ao): both are rescaled to the larger max. Inline folds and
// the fold after a split both run this, lane for lane what the lanes kernel
// does, so the row's bits do not depend on the path.
void Fold(float* am, float* al, float* ao, float m, float l, const float* o, int hd) {
  const float m_new = *am > m ? *am : m;
  const float a = ExpScalar(*am - m_new), b = ExpScalar(m - m_new);
  *al = std::fma(*al, a, l * b);
  *am = m_new;
  for (int c = 0; c < hd; c += 16) {
    _mm512_storeu_ps(ao + c,
                     _mm512_fmadd_ps(_mm512_loadu_ps(ao + c), _mm512_set1_ps(a),
                                     _mm512_mul_ps(_mm512_loadu_ps(o + c), _mm512_set1_ps(b))));
  }
}

// dst = o / l.
void Normalize(float* dst, const float* o, float l, int hd) {
  const __m512 inv = _mm512_set1_ps(1.0f / l);
  for (int c = 0; c < hd; c += 16)
    _mm512_storeu_ps(dst + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), inv));
}

// Loads keys/values [p0, p0 + nk) of KV head h as floats; rows past nk are zero.
void LoadTile(float* dst, const KvLayerView& kv, const AttnSeq& seq, int kv_idx, int h, int32_t p0,
              int nk) {
  const int hd = kv.head_dim;
  const int64_t row_bytes = hd * kv.ElemBytes();
  // Walk block and slot incrementally: no division per key.
  int32_t block = p0 / kv.block_size, slot = p0 % kv.block_size;
  const int64_t head_off = (static_cast<int64_t>(kv_idx) * kv.n_kv_heads + h) * kv.block_size;
  for (int j = 0; j < kTile; ++j) {
    float* row = dst + j * hd;
    if (j >= nk) {
      std::memset(row, 0, hd * sizeof(float));
      continue;
    }
    const uint8_t* src = kv.Block(seq.block_table[block]) + (head_off + slot) * row_bytes;
    if (++slot == kv.block_size) {
      slot = 0;
      ++block;
    }
    for (int c = 0; c < hd; c += 16) {
      const __m512 x =
          kv.kv_type == DType::kF16
              ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * c)))
              : _mm512_loadu_ps(reinterpret_cast<const float*>(src) + c);
      _mm512_storeu_ps(row + c, x);
    }
  }
}

// Query heads in lanes: lane l of group lg is query head lg*16 + l, i.e.
// row (lg*16 + l) / group, head (lg*16 + l) % group of the item.
void ProcessItemLanes(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                      const AttnSeq& seq, int h, int group, int32_t i0, int32_t i1, float scale,
                      int32_t seg_keys, const Scratch& s) {
  const int hd = kv.head_dim;
  const int nqh = (i1 - i0) * group, n_lg = (nqh + 15) / 16;
  __m512i pos[kMaxQHeads / 16];
  __m512 m[kMaxQHeads / 16], l[kMaxQHeads / 16];    // within the segment; outputs in ot
  __m512 am[kMaxQHeads / 16], al[kMaxQHeads / 16];  // folded; outputs in o
  int32_t last_pos[kMaxQHeads / 16];                // position of the group's last real row
  for (int lg = 0; lg < n_lg; ++lg) {
    alignas(64) int32_t lane_pos[16];
    float* qt = s.qt + lg * hd * 16;
    for (int lane = 0; lane < 16; ++lane) {
      const int qh = lg * 16 + lane;
      if (qh < nqh) {
        const int r = qh / group, g = qh % group;
        lane_pos[lane] = seq.n_past + i0 + r;
        const float* qv = q + (seq.row0 + i0 + r) * ldq + (h * group + g) * hd;  // (hd)
        for (int d = 0; d < hd; ++d) qt[d * 16 + lane] = qv[d] * scale;
      } else {
        lane_pos[lane] = INT_MAX;  // padding lane: zero query, sees everything
        for (int d = 0; d < hd; ++d) qt[d * 16 + lane] = 0.0f;
      }
    }
    pos[lg] = _mm512_load_si512(lane_pos);
    last_pos[lg] = seq.n_past + i0 + (lg * 16 + 15 < nqh ? lg * 16 + 15 : nqh - 1) / group;
  }
  const int32_t first_pos = seq.n_past + i0, ctx_end = seq.n_past + i1;
  for (int32_t seg0 = 0; seg0 < ctx_end; seg0 += seg_keys) {
    const int32_t seg_end = ctx_end - seg0 < seg_keys ? ctx_end : seg0 + seg_keys;
    for (int lg = 0; lg < n_lg; ++lg) {
      m[lg] = _mm512_set1_ps(-INFINITY);
      l[lg] = _mm512_setzero_ps();
      if (last_pos[lg] >= seg0) std::memset(s.ot + lg * hd * 16, 0, sizeof(float) * hd * 16);
    }
    for (int32_t p0 = seg0; p0 < seg_end; p0 += kTile) {
      const int nk = seg_end - p0 < kTile ? seg_end - p0 : kTile;
      LoadTile(s.k, kv, seq, 0, h, p0, nk);
      LoadTile(s.v, kv, seq, 1, h, p0, nk);
      for (int lg = 0; lg < n_lg; ++lg) {
        if (last_pos[lg] < p0) continue;  // every row of the group precedes the tile
        const float* qt = s.qt + lg * hd * 16;
        float* ot = s.ot + lg * hd * 16;
        // Loops run over the whole tile (compile-time 16) so sc[] stays in
        // registers; keys past nk are zero rows and masked out.
        __m512 sc[kTile];
        for (int j = 0; j < kTile; ++j) sc[j] = _mm512_setzero_ps();
        for (int d = 0; d < hd; ++d) {
          const __m512 qd = _mm512_load_ps(qt + d * 16);
          for (int j = 0; j < kTile; ++j) {
            sc[j] = _mm512_fmadd_ps(qd, _mm512_set1_ps(s.k[j * hd + d]), sc[j]);
          }
        }
        // Causal mask: key p0 + j is visible to lanes whose position is >= it.
        __mmask16 vis[kTile];
        __m512 tmax = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < kTile; ++j) {
          vis[j] = j >= nk ? __mmask16{0}
                   : p0 + j < first_pos
                       ? __mmask16{0xFFFF}
                       : _mm512_cmpge_epi32_mask(pos[lg], _mm512_set1_epi32(p0 + j));
          tmax = _mm512_mask_max_ps(tmax, vis[j], tmax, sc[j]);
        }
        const __m512 m_new = _mm512_max_ps(m[lg], tmax);
        // A lane that sees the segment sees its first key, so after the first
        // tile its m is finite; before it m is -inf and corr underflows to
        // ~1e-38, harmless against l = o = 0. Lanes that see none of the
        // segment are left out of its fold.
        const __m512 corr = Exp512(_mm512_sub_ps(m[lg], m_new));
        __m512 lsum = _mm512_setzero_ps();
        for (int j = 0; j < kTile; ++j) {
          sc[j] = _mm512_maskz_mov_ps(vis[j], Exp512(_mm512_sub_ps(sc[j], m_new)));
          lsum = _mm512_add_ps(lsum, sc[j]);
        }
        l[lg] = _mm512_fmadd_ps(l[lg], corr, lsum);
        m[lg] = m_new;
        for (int d = 0; d < hd; ++d) {
          __m512 o0 = _mm512_mul_ps(_mm512_load_ps(ot + d * 16), corr);
          __m512 o1 = _mm512_setzero_ps();
          for (int j = 0; j < kTile; j += 2) {
            o0 = _mm512_fmadd_ps(sc[j], _mm512_set1_ps(s.v[j * hd + d]), o0);
            o1 = _mm512_fmadd_ps(sc[j + 1], _mm512_set1_ps(s.v[(j + 1) * hd + d]), o1);
          }
          _mm512_store_ps(ot + d * 16, _mm512_add_ps(o0, o1));
        }
      }
    }
    // Fold the segment into the lanes that see it, as Fold does per head.
    for (int lg = 0; lg < n_lg; ++lg) {
      if (last_pos[lg] < seg0) continue;
      const float* ot = s.ot + lg * hd * 16;
      float* ao = s.o + lg * hd * 16;
      if (seg0 == 0) {  // every lane sees key 0
        am[lg] = m[lg];
        al[lg] = l[lg];
        std::memcpy(ao, ot, sizeof(float) * hd * 16);
        continue;
      }
      const __mmask16 sees = _mm512_cmpge_epi32_mask(pos[lg], _mm512_set1_epi32(seg0));
      const __m512 m_new = _mm512_max_ps(am[lg], m[lg]);
      const __m512 a = Exp512(_mm512_sub_ps(am[lg], m_new));
      const __m512 b = Exp512(_mm512_sub_ps(m[lg], m_new));
      al[lg] =
          _mm512_mask_mov_ps(al[lg], sees, _mm512_fmadd_ps(al[lg], a, _mm512_mul_ps(l[lg], b)));
      am[lg] = _mm512_mask_mov_ps(am[lg], sees, m_new);
      for (int d = 0; d < hd; ++d) {
        const __m512 ad = _mm512_load_ps(ao + d * 16);
        const __m512 folded = _mm512_fmadd_ps(ad, a, _mm512_mul_ps(_mm512_load_ps(ot + d * 16), b));
        _mm512_store_ps(ao + d * 16, _mm512_mask_mov_ps(ad, sees, folded));
      }
    }
  }
  for (int lg = 0; lg < n_lg; ++lg) {
    alignas(64) float inv[16];
    _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), al[lg]));
    const float* ao = s.o + lg * hd * 16;
    for (int lane = 0; lane < 16 && lg * 16 + lane < nqh; ++lane) {
      const int qh = lg * 16 + lane, r = qh / group, g = qh % group;
      float* dst = out + (seq.row0 + i0 + r) * ldo + (h * group + g) * hd;  // (hd)
      for (int d = 0; d < hd; ++d) dst[d] = ao[d * 16 + lane] * inv[lane];
    }
  }
}

// K of keys [p0, p0 + nk) of KV head h, transposed into kt (head_dim, 16):
// kt[d * 16 + j] = K[p0 + j][d]; keys past nk are zero.
void LoadKTransposed(float* kt, const KvLayerView& kv, const AttnSeq& seq, int h, int32_t p0,
                     int nk) {
  const int hd = kv.head_dim;
  const int64_t row_bytes = hd * kv.ElemBytes();
  const uint8_t* src[kTile];
  int32_t block = p0 / kv.block_size, slot = p0 % kv.block_size;
  for (int j = 0; j < nk; ++j) {
    src[j] = kv.Block(seq.block_table[block]) +
             (static_cast<int64_t>(h) * kv.block_size + slot) * row_bytes;
    if (++slot == kv.block_size) {
      slot = 0;
      ++block;
    }
  }
  for (int c = 0; c < hd; c += 16) {
    __m512 r[kTile];
    for (int j = 0; j < kTile; ++j) {
      if (j >= nk) {
        r[j] = _mm512_setzero_ps();
      } else if (kv.kv_type == DType::kF16) {
        r[j] =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[j] + 2 * c)));
      } else {
        r[j] = _mm512_loadu_ps(reinterpret_cast<const float*>(src[j]) + c);
      }
    }
    Transpose16x16(r);
    for (int dd = 0; dd < 16; ++dd) _mm512_storeu_ps(kt + (c + dd) * kTile, r[dd]);
  }
}

// One query row, query heads h * group + g0 .. + ng, keys in lanes, over
// segments [seg0, seg1) of its context. Every operation mirrors
// ProcessItemLanes' for one lane in the same order, so a row's result does
// not depend on which kernel or batch computed it (the engine checks that
// batched and solo decoding agree token for token). Without partials the
// segments are the whole context, folded as they finish, and the result goes
// to out; with them, segment k's partial of head g goes to
// partials + (g * n_seg + k) * PartialFloats(head_dim) instead.
void ProcessRow(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                const AttnSeq& seq, int h, int group, int g0_head, int ng_heads, int32_t i,
                float scale, int32_t seg_keys, int32_t seg0, int32_t seg1, float* partials,
                const Scratch& s) {
  const int hd = kv.head_dim, nc = hd / 16;
  float* qs = s.qt;  // (ng_heads, hd) scaled queries
  const float* qrow = q + (seq.row0 + i) * ldq + (h * group + g0_head) * hd;  // (ng_heads, hd)
  for (int g = 0; g < ng_heads; ++g) {
    for (int c = 0; c < nc; ++c) {
      _mm512_storeu_ps(qs + g * hd + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(qrow + g * hd + 16 * c),
                                                           _mm512_set1_ps(scale)));
    }
  }
  const int32_t ctx_end = seq.n_past + i + 1;
  const int32_t n_seg = (ctx_end + seg_keys - 1) / seg_keys;
  const int64_t pf = PartialFloats(hd);
  for (int32_t k = seg0; k < seg1; ++k) {
    const int32_t seg_begin = k * seg_keys;
    const int32_t seg_end = ctx_end - seg_begin < seg_keys ? ctx_end : seg_begin + seg_keys;
    for (int g = 0; g < ng_heads; ++g) {
      s.m[g] = -INFINITY;
      s.l[g] = 0.0f;
    }
    std::memset(s.o, 0, sizeof(float) * ng_heads * hd);
    for (int32_t ps = seg_begin; ps < seg_end; ps += kSuper * kTile) {
      // Scores of up to kSuper tiles at once: their FMA chains interleave
      // (one chain alone waits on the FMA latency every step) and share
      // each query broadcast. One FMA chain per key lane in d order, as in
      // the lanes kernel and as tile by tile.
      const int nt =
          static_cast<int>(std::min<int32_t>(kSuper, (seg_end - ps + kTile - 1) / kTile));
      for (int t = 0; t < nt; ++t) {
        const int32_t p0 = ps + t * kTile;
        LoadKTransposed(s.k + t * kTile * hd, kv, seq, h, p0,
                        seg_end - p0 < kTile ? seg_end - p0 : kTile);
      }
      for (int g = 0; g < ng_heads; ++g) {
        const float* qv = qs + g * hd;
        float* scores = s.sc + g * kSuper * kTile;
        if (nt == kSuper) {
          __m512 sc[kSuper];
          for (int t = 0; t < kSuper; ++t) sc[t] = _mm512_setzero_ps();
          for (int d = 0; d < hd; ++d) {
            const __m512 qd = _mm512_set1_ps(qv[d]);
            for (int t = 0; t < kSuper; ++t) {
              sc[t] = _mm512_fmadd_ps(qd, _mm512_loadu_ps(s.k + (t * hd + d) * kTile), sc[t]);
            }
          }
          for (int t = 0; t < kSuper; ++t) _mm512_storeu_ps(scores + t * kTile, sc[t]);
        } else {
          for (int t = 0; t < nt; ++t) {
            __m512 sc0 = _mm512_setzero_ps();
            for (int d = 0; d < hd; ++d) {
              sc0 = _mm512_fmadd_ps(_mm512_set1_ps(qv[d]),
                                    _mm512_loadu_ps(s.k + (t * hd + d) * kTile), sc0);
            }
            _mm512_storeu_ps(scores + t * kTile, sc0);
          }
        }
      }
      for (int t = 0; t < nt; ++t) {
        const int32_t p0 = ps + t * kTile;
        const int nk = seg_end - p0 < kTile ? seg_end - p0 : kTile;
        const __mmask16 kmask = static_cast<__mmask16>((1u << nk) - 1);
        LoadTile(s.v, kv, seq, 1, h, p0, nk);
        float corr[kMaxQHeads];
        for (int g = 0; g < ng_heads; ++g) {
          const __m512 sc0 = _mm512_loadu_ps(s.sc + (g * kSuper + t) * kTile);
          const float m_old = s.m[g];
          const float tmax = _mm512_mask_reduce_max_ps(kmask, sc0);
          const float m_new = m_old > tmax ? m_old : tmax;
          corr[g] = ExpScalar(m_old - m_new);
          const __m512 pv =
              _mm512_maskz_mov_ps(kmask, Exp512(_mm512_sub_ps(sc0, _mm512_set1_ps(m_new))));
          _mm512_storeu_ps(s.p + g * kTile, pv);
          float lsum = 0.0f;
          for (int j = 0; j < kTile; ++j) lsum += s.p[g * kTile + j];
          s.l[g] = std::fma(s.l[g], corr[g], lsum);
          s.m[g] = m_new;
        }
        // P·V for all heads: each V load feeds every head; even and odd keys in
        // two accumulators added at the end, as the lanes kernel does.
        for (int c = 0; c < nc; ++c) {
          for (int g0 = 0; g0 < ng_heads; g0 += 4) {
            const int ng = ng_heads - g0 < 4 ? ng_heads - g0 : 4;
            __m512 o0[4], o1[4];
            for (int g = 0; g < ng; ++g) {
              o0[g] = _mm512_mul_ps(_mm512_loadu_ps(s.o + (g0 + g) * hd + 16 * c),
                                    _mm512_set1_ps(corr[g0 + g]));
              o1[g] = _mm512_setzero_ps();
            }
            for (int j = 0; j < kTile; j += 2) {  // p and V are zero past nk
              const __m512 v0 = _mm512_loadu_ps(s.v + j * hd + 16 * c);
              const __m512 v1 = _mm512_loadu_ps(s.v + (j + 1) * hd + 16 * c);
              for (int g = 0; g < ng; ++g) {
                o0[g] = _mm512_fmadd_ps(_mm512_set1_ps(s.p[(g0 + g) * kTile + j]), v0, o0[g]);
                o1[g] = _mm512_fmadd_ps(_mm512_set1_ps(s.p[(g0 + g) * kTile + j + 1]), v1, o1[g]);
              }
            }
            for (int g = 0; g < ng; ++g) {
              _mm512_storeu_ps(s.o + (g0 + g) * hd + 16 * c, _mm512_add_ps(o0[g], o1[g]));
            }
          }
        }
      }
    }
    for (int g = 0; g < ng_heads; ++g) {
      const float* o = s.o + g * hd;
      if (partials != nullptr) {
        float* part = partials + (g * n_seg + k) * pf;
        part[0] = s.m[g];
        part[1] = s.l[g];
        std::memcpy(part + 2, o, sizeof(float) * hd);
      } else if (k == 0) {
        s.am[g] = s.m[g];
        s.al[g] = s.l[g];
        std::memcpy(s.ot + g * hd, o, sizeof(float) * hd);
      } else {
        Fold(&s.am[g], &s.al[g], s.ot + g * hd, s.m[g], s.l[g], o, hd);
      }
    }
  }
  if (partials != nullptr) return;
  for (int g = 0; g < ng_heads; ++g) {
    float* dst = out + (seq.row0 + i) * ldo + (h * group + g0_head + g) * hd;  // (hd)
    Normalize(dst, s.ot + g * hd, s.al[g], hd);
  }
}

// Folds the n_seg partials of one split row's query head (part: (n_seg,
// PartialFloats(hd))) in segment order, as ProcessRow does inline, into dst.
void FoldPartials(float* dst, const float* part, int32_t n_seg, int hd, const Scratch& s) {
  const int64_t pf = PartialFloats(hd);
  float am = part[0], al = part[1];
  float* ao = s.ot;  // (hd)
  std::memcpy(ao, part + 2, sizeof(float) * hd);
  for (int32_t k = 1; k < n_seg; ++k)
    Fold(&am, &al, ao, part[k * pf], part[k * pf + 1], part + k * pf + 2, hd);
  Normalize(dst, ao, al, hd);
}

}  // namespace

void PagedAttentionAvx512(float* out, int64_t ldo, const float* q, int64_t ldq,
                          const KvLayerView& kv, const AttnSeq* seqs, int n_seqs, int n_heads,
                          float scale, const WorkPlan& plan, float* scratch, float* partials,
                          ThreadPool* pool, int ith, int nth) {
  const int hd = kv.head_dim;
  const int group = n_heads / kv.n_kv_heads;
  const int32_t seg_keys = plan.segment_keys();
  // 64-byte aligned sections for the aligned loads of qt / ot / o.
  float* base =
      reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
  Scratch s;
  s.qt = base;
  s.ot = s.qt + kMaxQHeads * hd;
  s.o = s.ot + kMaxQHeads * hd;
  s.k = s.o + kMaxQHeads * hd;
  s.v = s.k + kSuper * kTile * hd;
  s.m = s.v + kTile * hd;
  s.l = s.m + kMaxQHeads;
  s.p = s.l + kMaxQHeads;
  s.am = s.p + kMaxQHeads * kTile;
  s.al = s.am + kMaxQHeads;
  s.sc = s.al + kMaxQHeads;
  // Runs rows [i0, i1) of KV head h of seq whole: the lanes kernel when
  // they fill its lanes, else row by row over query heads [g0, g0 + ng).
  auto run_item = [&](const AttnSeq& seq, int h, int32_t i0, int32_t i1, int g0, int ng) {
    if ((i1 - i0) * group >= 8) {
      ProcessItemLanes(out, ldo, q, ldq, kv, seq, h, group, i0, i1, scale, seg_keys, s);
      return;
    }
    for (int32_t i = i0; i < i1; ++i) {
      ProcessRow(out, ldo, q, ldq, kv, seq, h, group, g0, ng, i, scale, seg_keys, 0,
                 plan.Segments(seq.n_past + i + 1), nullptr, s);
    }
  };
  if (plan.split()) {
    ForEachUnit(plan, kv, seqs, n_seqs, n_heads, [&](const WorkUnit& u) {
      if (u.owner != ith) return;
      const AttnSeq& seq = seqs[u.seq];
      if (u.seg < 0) {
        run_item(seq, u.kv_head, u.i0, u.i1, 0, group);
      } else {
        ProcessRow(out, ldo, q, ldq, kv, seq, u.kv_head, group, 0, group, u.i0, scale, seg_keys,
                   u.seg, u.seg + 1, partials + u.partial, s);
      }
    });
    if (pool != nullptr) pool->Barrier();
    // Each split row's query heads, interleaved across threads.
    int64_t task = 0;
    ForEachUnit(plan, kv, seqs, n_seqs, n_heads, [&](const WorkUnit& u) {
      if (u.seg != 0) return;
      const AttnSeq& seq = seqs[u.seq];
      for (int g = 0; g < group; ++g) {
        if (task++ % nth != ith) continue;
        float* dst = out + (seq.row0 + u.i0) * ldo + (u.kv_head * group + g) * hd;  // (hd)
        FoldPartials(dst, partials + u.partial + g * u.n_seg * PartialFloats(hd), u.n_seg, hd, s);
      }
    });
    return;
  }
  const int32_t chunk = RowsPerItem(group);
  // Items interleave across threads so the causal triangle's cost spreads.
  // With few decode items (one sequence: n_kv_heads items) each query head
  // becomes its own item so both threads get work; they then convert the
  // same K/V tiles twice, which costs less than idling.
  int64_t n_items = 0;
  for (int si = 0; si < n_seqs; ++si)
    n_items += kv.n_kv_heads * ((seqs[si].n_new + chunk - 1) / chunk);
  const bool split_heads = nth > 1 && n_items < 4 * nth;
  int64_t item = 0;
  for (int si = 0; si < n_seqs; ++si) {
    const AttnSeq& seq = seqs[si];
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      for (int32_t i0 = 0; i0 < seq.n_new; i0 += chunk) {
        const int32_t i1 = i0 + chunk < seq.n_new ? i0 + chunk : seq.n_new;
        if ((i1 - i0) * group >= 8) {
          if (item++ % nth == ith) run_item(seq, h, i0, i1, 0, group);
          continue;
        }
        for (int32_t i = i0; i < i1; ++i) {
          if (split_heads) {
            for (int g = 0; g < group; ++g) {
              if (item++ % nth == ith) run_item(seq, h, i, i + 1, g, 1);
            }
          } else if (item++ % nth == ith) {
            run_item(seq, h, i, i + 1, 0, group);
          }
        }
      }
    }
  }
}

}  // namespace pdserve::kernels::internal

#else

namespace pdserve::kernels::internal {
void PagedAttentionAvx512(float*, int64_t, const float*, int64_t, const KvLayerView&,
                          const AttnSeq*, int, int, float, const WorkPlan&, float*, float*,
                          ThreadPool*, int, int) {}
}  // namespace pdserve::kernels::internal

#endif
