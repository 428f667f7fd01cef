// AVX2 matmul over packed K-quant weights (Q4_K, Q5_K, Q6_K in 8-row groups,
// layout in matmul_internal.h) against Q8_K activations; the decode GEMV
// path, also used for batches. One group's 8 rows are the 8 lanes of every
// accumulator, so there are no per-row horizontal sums and each 32-byte load
// feeds 8 rows: per 4 bytes of a row, vpmaddubsw against the 4 activation
// bytes broadcast to every lane.
#include <utility>

#include "kernels/cpu/matmul_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace pdserve::kernels::internal {
namespace {

constexpr int kMaxTokens = 4;             // tokens per tile
constexpr int64_t kPrefetchBytes = 2048;  // weight prefetch distance

inline __m256i Bcast4(const int8_t* p) { return _mm256_set1_epi32(static_cast<int>(LoadU32(p))); }

inline __m256i Load256(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline __m128i Load128(const void* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// Shifts each 16-bit lane left by S bits (right when S < 0).
template <int S>
inline __m256i Shift16(__m256i v) {
  if constexpr (S > 0) {
    return _mm256_slli_epi16(v, S);
  } else if constexpr (S < 0) {
    return _mm256_srli_epi16(v, -S);
  } else {
    return v;
  }
}

// A scale pair (16 bytes, lane i bytes a_i, b_i) as int16 (a_i, a_i) and
// (b_i, b_i) per lane i, to vpmaddwd against the int16 pair sums of row i.
template <bool kSigned>
inline void ScalePair(const uint8_t* p, __m256i* first, __m256i* second) {
  const __m128i raw = Load128(p);
  const __m128i a =
      _mm_shuffle_epi8(raw, _mm_setr_epi8(0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14));
  const __m128i b =
      _mm_shuffle_epi8(raw, _mm_setr_epi8(1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15));
  if constexpr (kSigned) {
    *first = _mm256_cvtepi8_epi16(a);
    *second = _mm256_cvtepi8_epi16(b);
  } else {
    *first = _mm256_cvtepu8_epi16(a);
    *second = _mm256_cvtepu8_epi16(b);
  }
}

// Part j (64 elements) of super-block ib for NT tokens: adds Σ scale · Σ q·a
// of row i into lane i of sumi[t]. Partial sums stay in int16 for kFlush
// chunks (4 elements each) and are then widened by vpmaddwd with the scales:
// 8 x 2·15·128, 4 x 2·31·128 and 2 x 2·63·128 all stay below 2^15.
template <DType T, int NT>
inline void Part(const uint8_t* p, int j, const BlockQ8_K* const* acts, int64_t ib, __m256i* sumi) {
  constexpr KPackLayout kL = KLayout(T);
  constexpr bool kQ5 = T == DType::kQ5_K, kQ6 = T == DType::kQ6_K;
  constexpr int kFlush = kQ6 ? 2 : kQ5 ? 4 : 8;
  const uint8_t* qs = p + 256 * j;
  const uint8_t* qh = p + kL.qh + (kQ6 ? 128 : 64) * j;
  const int8_t* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = acts[t][ib].qs + 64 * j;
  __m256i sc_lo, sc_hi;
  if constexpr (!kQ6) ScalePair<false>(p + kL.sc + 16 * j, &sc_lo, &sc_hi);
  __m256i plo[NT], phi[NT];
  for (int t = 0; t < NT; ++t) plo[t] = phi[t] = _mm256_setzero_si256();
  auto chunk = [&]<int C>() {
    constexpr int kV = C / 4, kCc = C % 4;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i raw = Load256(qs + 32 * C);
    __m256i lo = _mm256_and_si256(raw, m4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
    // The high bits are masked after 16-bit shifts, so nothing moves across
    // bytes into the kept bits.
    if constexpr (kQ5) {
      const __m256i h = Load256(qh + 32 * kV);
      const __m256i m16 = _mm256_set1_epi8(0x10);
      lo = _mm256_or_si256(lo, _mm256_and_si256(Shift16<4 - kCc>(h), m16));
      hi = _mm256_or_si256(hi, _mm256_and_si256(Shift16<-kCc>(h), m16));
    } else if constexpr (kQ6) {
      const __m256i m48 = _mm256_set1_epi8(0x30);
      lo = _mm256_or_si256(lo, _mm256_and_si256(Shift16<4 - 2 * kCc>(Load256(qh + 32 * kV)), m48));
      hi = _mm256_or_si256(hi,
                           _mm256_and_si256(Shift16<4 - 2 * kCc>(Load256(qh + 64 + 32 * kV)), m48));
    }
    for (int t = 0; t < NT; ++t) {
      plo[t] = _mm256_add_epi16(plo[t], _mm256_maddubs_epi16(lo, Bcast4(a[t] + 4 * C)));
      phi[t] = _mm256_add_epi16(phi[t], _mm256_maddubs_epi16(hi, Bcast4(a[t] + 32 + 4 * C)));
    }
    if constexpr ((C + 1) % kFlush == 0) {
      if constexpr (kQ6) {
        // Chunks 4g..4g+3: sub-blocks 4j+g (low nibbles) and 4j+2+g (high).
        ScalePair<true>(p + kL.sc + 16 * (2 * j + C / 4), &sc_lo, &sc_hi);
      }
      for (int t = 0; t < NT; ++t) {
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_madd_epi16(plo[t], sc_lo),
                                                             _mm256_madd_epi16(phi[t], sc_hi)));
        plo[t] = phi[t] = _mm256_setzero_si256();
      }
    }
  };
  [&]<int... Cs>(std::integer_sequence<int, Cs...>) { (chunk.template operator()<Cs>(), ...); }
  (std::make_integer_sequence<int, 8>{});
}

// One 8-row group times NT tokens over all nb super-blocks; rows <= 8 valid.
// A token's result does not depend on NT (integer sums are exact and the
// float steps run in the same order), so batches match solo decoding.
template <DType T, int NT>
void GroupTile(float* y, int64_t ldy, const uint8_t* wg, int64_t nb, const BlockQ8_K* const* acts,
               int rows) {
  constexpr KPackLayout kL = KLayout(T);
  constexpr bool kQ6 = T == DType::kQ6_K;
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* p = wg + ib * kL.bytes;
    for (int off = 0; off < kL.bytes; off += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes + off, _MM_HINT_T0);
    }
    const __m256 d = _mm256_cvtph_ps(Load128(p + kL.d));
    __m256i sumi[NT];
    if constexpr (kQ6) {
      // The -32 offset of every quant: -32 · Σ_s sc_s · bsum_s, over the
      // activations' 16-element sums paired like the scales.
      const __m256i pair_order =
          _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, 0, 1, 4, 5, 2, 3,
                           6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
      for (int t = 0; t < NT; ++t) {
        const __m256i pairs = _mm256_shuffle_epi8(Load256(acts[t][ib].bsums), pair_order);
        __m256i off = _mm256_setzero_si256();
        for (int k = 0; k < 8; ++k) {
          const __m256i sc = _mm256_cvtepi8_epi16(Load128(p + kL.sc + 16 * k));
          off = _mm256_add_epi32(
              off, _mm256_madd_epi16(sc, _mm256_permutevar8x32_epi32(pairs, _mm256_set1_epi32(k))));
        }
        sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5));
      }
    } else {
      // The mins: -dmin · Σ_s m_s · bsum32_s, straight into the float sums.
      // bsum32 of sub-blocks (2j, 2j+1) land in int32 lanes 0, 1, 4, 5.
      const __m256 dmin = _mm256_cvtph_ps(Load128(p + kL.dmin));
      const __m256i ones = _mm256_set1_epi16(1);
      for (int t = 0; t < NT; ++t) {
        const __m256i s32 = _mm256_madd_epi16(Load256(acts[t][ib].bsums), ones);
        const __m256i pairs = _mm256_packs_epi32(s32, s32);
        __m256i msum = _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
          const __m256i m = _mm256_cvtepu8_epi16(Load128(p + kL.mins + 16 * j));
          const int lane = j < 2 ? j : j + 2;
          msum = _mm256_add_epi32(msum, _mm256_madd_epi16(m, _mm256_permutevar8x32_epi32(
                                                                 pairs, _mm256_set1_epi32(lane))));
        }
        acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum),
                                  _mm256_mul_ps(dmin, _mm256_set1_ps(acts[t][ib].d)), acc[t]);
        sumi[t] = _mm256_setzero_si256();
      }
    }
    for (int j = 0; j < 4; ++j) Part<T, NT>(p, j, acts, ib, sumi);
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]),
                               _mm256_mul_ps(d, _mm256_set1_ps(acts[t][ib].d)), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    if (rows == kKPackRows) {
      _mm256_storeu_ps(y + t * ldy, acc[t]);
    } else {
      alignas(32) float tmp[kKPackRows];
      _mm256_store_ps(tmp, acc[t]);
      for (int i = 0; i < rows; ++i) y[t * ldy + i] = tmp[i];
    }
  }
}

template <DType T>
using TileFn = void (*)(float*, int64_t, const uint8_t*, int64_t, const BlockQ8_K* const*, int);

template <DType T>
TileFn<T> TileFor(int nt) {
  static constexpr TileFn<T> kFns[kMaxTokens] = {GroupTile<T, 1>, GroupTile<T, 2>, GroupTile<T, 3>,
                                                 GroupTile<T, 4>};
  return kFns[nt - 1];
}

// Groups in order (the matrix is one sequential stream), token tiles inside
// a group so its weights (nb super-blocks, L2) are read from memory once.
template <DType T>
void MatMulPackedK(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                   int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  constexpr KPackLayout kL = KLayout(T);
  const int64_t nb = w.n_in / kQKK;
  const BlockQ8_K* acts[kMaxTokens];
  for (int64_t r = r0; r < r1; r += kKPackRows) {
    const int rows = static_cast<int>(r1 - r < kKPackRows ? r1 - r : kKPackRows);
    const uint8_t* wg = static_cast<const uint8_t*>(w.data) + (r / kKPackRows) * nb * kL.bytes;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokens) {
      const int nt = static_cast<int>(n_tokens - t0 < kMaxTokens ? n_tokens - t0 : kMaxTokens);
      for (int t = 0; t < nt; ++t) {
        acts[t] = reinterpret_cast<const BlockQ8_K*>(static_cast<const uint8_t*>(xq) +
                                                     (t0 + t) * act_row_bytes);
      }
      TileFor<T>(nt)(y + t0 * ldy + r, ldy, wg, nb, acts, rows);
    }
  }
}

}  // namespace

void MatMulPackedKAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                       int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  switch (w.type) {
    case DType::kQ4_K:
      return MatMulPackedK<DType::kQ4_K>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ5_K:
      return MatMulPackedK<DType::kQ5_K>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ6_K:
      return MatMulPackedK<DType::kQ6_K>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    default:
      return MatMulPackedKScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
  }
}

}  // namespace pdserve::kernels::internal

#else  // no AVX2 at compile time: never selected at run time.

namespace pdserve::kernels::internal {
void MatMulPackedKAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                       int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  MatMulPackedKScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
}
}  // namespace pdserve::kernels::internal

#endif
