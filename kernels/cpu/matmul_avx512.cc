// AVX-512 (F BW VL DQ VNNI) matmul path, built with those -m flags and only
// called when the CPU has them (isa.cc).
//
// Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0: 16 output rows per register. A packed 32-block of a
// 16-row group unpacks to 8 vectors whose lane i holds 4 consecutive quants
// of row i; vpdpbusd against the 4 matching activation bytes broadcast to all
// lanes accumulates 16 row dot products at once, with no horizontal sums. A
// tile of up to 8 tokens reuses each unpacked block, so prefill reads every
// weight once per 8 tokens from L1 and decode streams the weights once.
#include "kernels/cpu/matmul_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__AVX512VL__)
#include <immintrin.h>

namespace pdserve::kernels::internal {
namespace {

constexpr int kMaxTile = 8;  // tokens per tile
// Fewest tokens for which packed K-quants take the AVX-512 kernel.
constexpr int64_t kAvx512KMinTokens = 4;
// Prefetch distance in blocks (16 blocks of Q4_1 are 5 KiB): measured 20-30%
// faster decode steps than the hardware prefetcher alone.
constexpr int64_t kPrefetchBlocks = 16;

inline __m512i Bcast4(const int8_t* p) { return _mm512_set1_epi32(static_cast<int>(LoadU32(p))); }

inline __m512 HalfToFloat16(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Unpacks one packed block-group: q[c] pairs with activation bytes 4c..4c+3;
// the row's dot is d·d_a·Σ(q·a) + off·(d_a·Σa).
template <DType T>
inline void UnpackBlock(const uint8_t* p, __m512i q[8], __m512* d, __m512* off) {
  if constexpr (T == DType::kQ8_0) {
    for (int c = 0; c < 8; ++c) q[c] = _mm512_loadu_si512(p + 64 * c);
    *d = HalfToFloat16(p + 512);
    *off = _mm512_mul_ps(*d, _mm512_set1_ps(-128.0f));
  } else {
    const __m512i mask = _mm512_set1_epi8(0x0F);
    for (int c = 0; c < 4; ++c) {
      const __m512i raw = _mm512_loadu_si512(p + 64 * c);
      q[c] = _mm512_and_si512(raw, mask);
      q[4 + c] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
    }
    if constexpr (IsQ5(T)) {
      // Bit c of each high-bit byte is bit 4 of chunk c's low-nibble
      // element, bit 4 + c that of its high-nibble element; the 16-bit
      // shifts keep each wanted bit inside its byte.
      const __m512i h = _mm512_loadu_si512(p + 256);
      const __m512i m16 = _mm512_set1_epi8(0x10);
      q[0] = _mm512_or_si512(q[0], _mm512_and_si512(_mm512_slli_epi16(h, 4), m16));
      q[1] = _mm512_or_si512(q[1], _mm512_and_si512(_mm512_slli_epi16(h, 3), m16));
      q[2] = _mm512_or_si512(q[2], _mm512_and_si512(_mm512_slli_epi16(h, 2), m16));
      q[3] = _mm512_or_si512(q[3], _mm512_and_si512(_mm512_slli_epi16(h, 1), m16));
      q[4] = _mm512_or_si512(q[4], _mm512_and_si512(h, m16));
      q[5] = _mm512_or_si512(q[5], _mm512_and_si512(_mm512_srli_epi16(h, 1), m16));
      q[6] = _mm512_or_si512(q[6], _mm512_and_si512(_mm512_srli_epi16(h, 2), m16));
      q[7] = _mm512_or_si512(q[7], _mm512_and_si512(_mm512_srli_epi16(h, 3), m16));
    }
    constexpr int kQuantBytes = PackedQuantBytes(T);
    *d = HalfToFloat16(p + kQuantBytes);
    *off = HasMin(T)           ? HalfToFloat16(p + kQuantBytes + 32)
           : T == DType::kQ5_0 ? _mm512_mul_ps(*d, _mm512_set1_ps(-16.0f))
                               : _mm512_mul_ps(*d, _mm512_set1_ps(-8.0f));
  }
}

// y[t][16 rows] (+)= one 16-row group times NT tokens over blocks [0, nb) of
// the packed group wg. Each block adds its scaled integer dot product and
// then its offset term to one accumulator: the two nearly cancel (Q4_1's
// min), so the running sum stays small and accurate. Each token's arithmetic
// is the same whatever NT, so a token's result does not depend on the batch
// it came in (batched and solo decoding agree exactly).
template <DType T, int NT>
void GroupTile(float* y, int64_t ldy, const uint8_t* wg, int64_t nb, int64_t pb, const ActQ8* acts,
               int64_t b_act0, __mmask16 rows, bool accumulate) {
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = accumulate ? _mm512_maskz_loadu_ps(rows, y + t * ldy) : _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < nb; ++b) {
    __m512i q[8];
    __m512 d, off;
    {
      // Weights stream through once per call: keep more of the stream in
      // flight than the hardware prefetcher does on its own (it stops at 4 KiB
      // pages). Integer arithmetic: the address may lie past the matrix, which
      // a prefetch never faults on.
      const char* ahead = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(wg) +
                                                        (b + kPrefetchBlocks) * pb);
      for (int64_t c = 0; c < pb; c += 64) _mm_prefetch(ahead + c, _MM_HINT_T0);
    }
    UnpackBlock<T>(wg + b * pb, q, &d, &off);
    const int64_t ba = b_act0 + b;
    for (int t = 0; t < NT; ++t) {
      const int8_t* a = acts[t].qs + ba * kQK;
      __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], Bcast4(a));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[4], Bcast4(a + 16));
      s0 = _mm512_dpbusd_epi32(s0, q[1], Bcast4(a + 4));
      s1 = _mm512_dpbusd_epi32(s1, q[5], Bcast4(a + 20));
      s0 = _mm512_dpbusd_epi32(s0, q[2], Bcast4(a + 8));
      s1 = _mm512_dpbusd_epi32(s1, q[6], Bcast4(a + 24));
      s0 = _mm512_dpbusd_epi32(s0, q[3], Bcast4(a + 12));
      s1 = _mm512_dpbusd_epi32(s1, q[7], Bcast4(a + 28));
      const __m512 s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
      acc[t] = _mm512_fmadd_ps(s, _mm512_mul_ps(d, _mm512_set1_ps(acts[t].d[ba])), acc[t]);
      acc[t] = _mm512_fmadd_ps(off, _mm512_set1_ps(acts[t].sa[ba]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, rows, acc[t]);
  }
}

template <DType T>
using TileFn = void (*)(float*, int64_t, const uint8_t*, int64_t, int64_t, const ActQ8*, int64_t,
                        __mmask16, bool);

template <DType T>
TileFn<T> TileFor(int nt) {
  static constexpr TileFn<T> kFns[kMaxTile] = {GroupTile<T, 1>, GroupTile<T, 2>, GroupTile<T, 3>,
                                               GroupTile<T, 4>, GroupTile<T, 5>, GroupTile<T, 6>,
                                               GroupTile<T, 7>, GroupTile<T, 8>};
  return kFns[nt - 1];
}

// Largest k range (in blocks) packed on the fly at once for ggml-layout
// weights: 64 blocks of Q8_0 = 34 KiB of stack.
constexpr int64_t kOnTheFlyBlocks = 64;

// PackGroup with gathers: lane i of each 64-byte chunk comes from row i.
template <DType T>
void PackGroupGather(uint8_t* dst, const uint8_t* src, int64_t row_bytes, int rows, int64_t b0,
                     int64_t b1) {
  if (row_bytes * kPackRows >= (int64_t{1} << 31)) {  // int32 gather offsets
    PackGroup(dst, src, row_bytes, rows, T, b0, b1);
    return;
  }
  constexpr int64_t kTypeSize = T == DType::kQ4_0 ? 18 : T == DType::kQ4_1 ? 20 : 34;
  constexpr int kQsOff = T == DType::kQ4_1 ? 4 : 2;
  constexpr int kChunks = T == DType::kQ8_0 ? 8 : 4;
  const int64_t pb = PackedBlockBytes(T);
  const __mmask16 mask = static_cast<__mmask16>((1u << rows) - 1);
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int>(row_bytes)));
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t b = b0; b < b1; ++b, dst += pb) {
    const uint8_t* base = src + b * kTypeSize;
    for (int c = 0; c < kChunks; ++c) {
      __m512i g = _mm512_mask_i32gather_epi32(zero, mask, idx, base + kQsOff + 4 * c, 1);
      if constexpr (T == DType::kQ8_0) {
        // q + 128 as unsigned; padding rows stay zero (their d is zero).
        g = _mm512_maskz_xor_epi32(mask, g, _mm512_set1_epi8(static_cast<char>(0x80)));
      }
      _mm512_storeu_si512(dst + 64 * c, g);
    }
    const __m512i dm = _mm512_mask_i32gather_epi32(zero, mask, idx, base, 1);  // d | m << 16
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kChunks * 64), _mm512_cvtepi32_epi16(dm));
    if constexpr (T == DType::kQ4_1) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kChunks * 64 + 32),
                          _mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
    }
  }
}

template <DType T>
void MatMulQ(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t act_row_bytes,
             int64_t n_tokens, int64_t r0, int64_t r1) {
  const int64_t nb = w.n_in / kQK;
  const int64_t pb = PackedBlockBytes(T);
  const bool packed = w.layout == WeightLayout::kPacked;
  const int64_t row_bytes = RowBytes(T, w.n_in);
  alignas(64) uint8_t tmp[kOnTheFlyBlocks * 544];
  ActQ8 acts[kMaxTile];
  for (int64_t r = r0; r < r1; r += kPackRows) {
    const int rows = static_cast<int>(r1 - r < kPackRows ? r1 - r : kPackRows);
    const __mmask16 mask = static_cast<__mmask16>((1u << rows) - 1);
    for (int64_t kb = 0; kb < nb; kb += packed ? nb : kOnTheFlyBlocks) {
      const int64_t kb1 = packed ? nb : (kb + kOnTheFlyBlocks < nb ? kb + kOnTheFlyBlocks : nb);
      const uint8_t* wg;
      if (packed) {
        wg = static_cast<const uint8_t*>(w.data) + (r / kPackRows) * nb * pb;
      } else {
        const uint8_t* src = static_cast<const uint8_t*>(w.data) + r * row_bytes;
        if constexpr (IsQ5(T)) {
          // Q5_0/Q5_1's high bits need regrouping: the portable packer.
          PackGroup(tmp, src, row_bytes, rows, T, kb, kb1);
        } else {
          PackGroupGather<T>(tmp, src, row_bytes, rows, kb, kb1);
        }
        wg = tmp;
      }
      for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTile) {
        const int nt = static_cast<int>(n_tokens - t0 < kMaxTile ? n_tokens - t0 : kMaxTile);
        for (int t = 0; t < nt; ++t) {
          acts[t] = ActQ8View(static_cast<const uint8_t*>(xq) + (t0 + t) * act_row_bytes, w.n_in);
        }
        TileFor<T>(nt)(y + t0 * ldy + r, ldy, wg, kb1 - kb, pb, acts, kb, mask, kb > 0);
      }
    }
  }
}

// F32 / F16 / BF16 weights against float activations.
template <DType T>
inline __m512 LoadW(const uint8_t* row, int64_t k) {
  if constexpr (T == DType::kF16) {
    return HalfToFloat16(row + 2 * k);
  } else if constexpr (T == DType::kBF16) {
    const __m512i h =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  } else {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
}

constexpr int kFloatTokens = 4;  // tokens per float tile: 16 accumulators

// 4 rows x NT tokens, one 16-lane FMA accumulator each, so each converted
// weight vector feeds NT tokens. A (row, token) sum runs in the same order
// whatever the tile.
template <DType T, int NT>
void FloatTile(float* y, int64_t ldy, const uint8_t* w0, int64_t rb, const float* const* x,
               int64_t n) {
  __m512 acc[4][NT];
  for (int i = 0; i < 4; ++i) {
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < n; k += 16) {
    __m512 wv[4];
    for (int i = 0; i < 4; ++i) wv[i] = LoadW<T>(w0 + i * rb, k);
    for (int t = 0; t < NT; ++t) {
      const __m512 xv = _mm512_loadu_ps(x[t] + k);
      for (int i = 0; i < 4; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    for (int i = 0; i < 4; ++i) y[t * ldy + i] = _mm512_reduce_add_ps(acc[i][t]);
  }
}

template <DType T>
using FloatTileFn = void (*)(float*, int64_t, const uint8_t*, int64_t, const float* const*,
                             int64_t);

template <DType T>
FloatTileFn<T> FloatTileFor(int nt) {
  static constexpr FloatTileFn<T> kFns[kFloatTokens] = {FloatTile<T, 1>, FloatTile<T, 2>,
                                                        FloatTile<T, 3>, FloatTile<T, 4>};
  return kFns[nt - 1];
}

// Rows in groups of 64 (256 KiB of f16 rows of 2048: L2) with token tiles
// inside, so weights stream from memory once per call.
template <DType T>
void MatMulFloat(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                 int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  constexpr int64_t kGroupRows = 64;
  const int64_t n = w.n_in, rb = RowBytes(T, n);
  const uint8_t* wd = static_cast<const uint8_t*>(w.data);  // (n_out, rb)
  auto x_row = [&](int64_t t) {
    return reinterpret_cast<const float*>(static_cast<const uint8_t*>(xq) + t * act_row_bytes);
  };
  // Rows past a multiple of 4 (and rows of other lengths) take the portable dot.
  const int64_t r4 = n % 16 == 0 ? r0 + (r1 - r0) / 4 * 4 : r0;
  const float* x[kFloatTokens];
  for (int64_t g = r0; g < r4; g += kGroupRows) {
    const int64_t g1 = g + kGroupRows < r4 ? g + kGroupRows : r4;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kFloatTokens) {
      const int nt = static_cast<int>(n_tokens - t0 < kFloatTokens ? n_tokens - t0 : kFloatTokens);
      for (int t = 0; t < nt; ++t) x[t] = x_row(t0 + t);
      const FloatTileFn<T> tile = FloatTileFor<T>(nt);
      for (int64_t r = g; r < g1; r += 4) tile(y + t0 * ldy + r, ldy, wd + r * rb, rb, x, n);
    }
  }
  if (r4 < r1) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      MatMulScalar(y + t * ldy, ldy, w, x_row(t), act_row_bytes, 1, r4, r1);
    }
  }
}

}  // namespace

void MatMulAvx512(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                  int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  switch (w.type) {
    case DType::kQ4_0:
      return MatMulQ<DType::kQ4_0>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ4_1:
      return MatMulQ<DType::kQ4_1>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ5_0:
      return MatMulQ<DType::kQ5_0>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ5_1:
      return MatMulQ<DType::kQ5_1>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ8_0:
      return MatMulQ<DType::kQ8_0>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kF32:
      return MatMulFloat<DType::kF32>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kF16:
      return MatMulFloat<DType::kF16>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kBF16:
      return MatMulFloat<DType::kBF16>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      // Packed: the AVX-512 tiles from kAvx512KMinTokens tokens up; below,
      // the AVX2 kernel streams the weights faster (measured at 1 token:
      // ~60-90% of the read bandwidth against ~40-60%, cause not found).
      // Both give the same bits (exact integer super-block sums, the same
      // float steps in the same order), so a token's result still does not
      // depend on its batch.
      if (w.layout == WeightLayout::kPacked) {
        if (n_tokens >= kAvx512KMinTokens) {
          return MatMulPackedKAvx512(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
        }
        return MatMulPackedKAvx2(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
      }
      return MatMulAvx2(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    default:
      return MatMulAvx2(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
  }
}

void QuantizeRowQ8Avx512(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1) {
  int8_t* qs = static_cast<int8_t*>(y);  // (n_in)
  uint8_t* dp = reinterpret_cast<uint8_t*>(qs + n_in);
  const int64_t nb = n_in / kQK;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xb = x + (b - b0) * kQK;
    const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
    const __m512 ax = _mm512_max_ps(_mm512_andnot_ps(sign, x0), _mm512_andnot_ps(sign, x1));
    const float amax = _mm512_reduce_max_ps(ax);
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const __m512 idv = _mm512_set1_ps(id);
    // Default MXCSR rounding: nearest, ties to even, as nearbyint in the scalar path.
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, idv));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, idv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kQK), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kQK + 16), _mm512_cvtepi32_epi8(q1));
    const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    const float sa = d * static_cast<float>(sum);
    std::memcpy(dp + 4 * b, &d, 4);
    std::memcpy(dp + 4 * (nb + b), &sa, 4);
  }
}

// As QuantQ8_K (kernels/quant.cc), bit for bit: the scale from the first
// element of largest magnitude (its sign included), quants rounded half to
// even (the scalar path's 1.5·2^23 trick, cvtps_epi32 here) and capped at 127.
void QuantizeRowQ8KAvx512(BlockQ8_K* y, const float* x, int64_t nb) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    __m512 v[16];
    __m512 amax_v = _mm512_setzero_ps();
    for (int k = 0; k < 16; ++k) {
      v[k] = _mm512_loadu_ps(x + 16 * k);
      amax_v = _mm512_max_ps(amax_v, _mm512_andnot_ps(sign, v[k]));
    }
    const float amax = _mm512_reduce_max_ps(amax_v);
    if (!(amax > 0)) {  // all zero (or NaN, which the scalar loop also skips)
      std::memset(&y[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    float max = 0;
    const __m512 amax_b = _mm512_set1_ps(amax);
    for (int k = 0; k < 16; ++k) {
      const __mmask16 m = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, v[k]), amax_b, _CMP_EQ_OQ);
      if (m) {
        max = x[16 * k + __builtin_ctz(m)];
        break;
      }
    }
    const float iscale = -127.f / max;
    const __m512 is = _mm512_set1_ps(iscale);
    const __m512i cap = _mm512_set1_epi32(127);
    for (int k = 0; k < 16; ++k) {
      const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(is, v[k])), cap);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].qs + 16 * k), _mm512_cvtepi32_epi8(q));
      y[i].bsums[k] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
    y[i].d = 1 / iscale;
  }
}

}  // namespace pdserve::kernels::internal

#else  // no AVX-512 at compile time: never selected at run time.

namespace pdserve::kernels::internal {
void MatMulAvx512(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                  int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  MatMulScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
}
void QuantizeRowQ8Avx512(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1) {
  QuantizeRowQ8Scalar(y, x, n_in, b0, b1);
}
void QuantizeRowQ8KAvx512(BlockQ8_K* y, const float* x, int64_t nb) {
  QuantizeRow(y, x, DType::kQ8_K, nb * kQKK);
}
}  // namespace pdserve::kernels::internal

#endif
