// AVX2 + FMA + F16C matmul path (no VNNI: vpmaddubsw + vpmaddwd), built with
// those -m flags and only called when the CPU has them (isa.cc). Also serves
// the K-quants for the AVX-512 path.
#include <type_traits>

#include "kernels/cpu/matmul_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace pdserve::kernels::internal {
namespace {

constexpr int kMaxTile = 4;              // tokens per tile: 16 ymm registers
constexpr int64_t kPrefetchBlocks = 16;  // weight prefetch distance, as on AVX-512

inline __m256i Bcast4(const int8_t* p) { return _mm256_set1_epi32(static_cast<int>(LoadU32(p))); }

inline __m256 HalfToFloat8(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One half (8 rows) of a packed 16-row group times NT tokens; see
// matmul_avx512.cc for the layout and the math.
template <DType T, int NT>
void HalfGroupTile(float* y, int64_t ldy, const uint8_t* wg, int64_t nb, int64_t pb,
                   const ActQ8* acts, int64_t b_act0, int half, int rows, bool accumulate) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  constexpr int kQuantBytes = PackedQuantBytes(T);
  constexpr bool kQ5 = IsQ5(T);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) {
    if (accumulate) {
      float tmp[8] = {};
      for (int i = 0; i < rows; ++i) tmp[i] = y[t * ldy + i];
      acc[t] = _mm256_loadu_ps(tmp);
    } else {
      acc[t] = _mm256_setzero_ps();
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    if (half == 0) {  // prefetch the stream once per group
      const char* ahead = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(wg) +
                                                        (b + kPrefetchBlocks) * pb);
      for (int64_t c = 0; c < pb; c += 64) _mm_prefetch(ahead + c, _MM_HINT_T0);
    }
    const uint8_t* p = wg + b * pb + 32 * half;
    const __m256 d = HalfToFloat8(wg + b * pb + kQuantBytes + 16 * half);
    const __m256 off = HasMin(T) ? HalfToFloat8(wg + b * pb + kQuantBytes + 32 + 16 * half)
                       : T == DType::kQ4_0 ? _mm256_mul_ps(d, _mm256_set1_ps(-8.0f))
                       : T == DType::kQ5_0 ? _mm256_mul_ps(d, _mm256_set1_ps(-16.0f))
                                           : _mm256_setzero_ps();
    const int64_t ba = b_act0 + b;
    if constexpr (T == DType::kQ8_0) {
      // q + 128 back to signed; |q| x sign-adjusted a keeps vpmaddubsw's u8 x s8
      // products in range (2 · 128 · 127 < 2^15).
      const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
      __m256i q[8], qa[8];
      for (int c = 0; c < 8; ++c) {
        q[c] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * c)),
                                flip);
        qa[c] = _mm256_abs_epi8(q[c]);
      }
      for (int t = 0; t < NT; ++t) {
        const int8_t* a = acts[t].qs + ba * kQK;
        __m256i s = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) {
          const __m256i prod =
              _mm256_maddubs_epi16(qa[c], _mm256_sign_epi8(Bcast4(a + 4 * c), q[c]));
          s = _mm256_add_epi32(s, _mm256_madd_epi16(prod, ones));
        }
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s),
                                 _mm256_mul_ps(d, _mm256_set1_ps(acts[t].d[ba])), acc[t]);
      }
    } else {
      __m256i q[8];
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * c));
        q[c] = _mm256_and_si256(raw, m4);
        q[4 + c] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      }
      if constexpr (kQ5) {
        // Bit c of each high-bit byte is bit 4 of chunk c's low-nibble
        // element, bit 4 + c that of its high-nibble element.
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 256));
        const __m256i m16 = _mm256_set1_epi8(0x10);
        q[0] = _mm256_or_si256(q[0], _mm256_and_si256(_mm256_slli_epi16(h, 4), m16));
        q[1] = _mm256_or_si256(q[1], _mm256_and_si256(_mm256_slli_epi16(h, 3), m16));
        q[2] = _mm256_or_si256(q[2], _mm256_and_si256(_mm256_slli_epi16(h, 2), m16));
        q[3] = _mm256_or_si256(q[3], _mm256_and_si256(_mm256_slli_epi16(h, 1), m16));
        q[4] = _mm256_or_si256(q[4], _mm256_and_si256(h, m16));
        q[5] = _mm256_or_si256(q[5], _mm256_and_si256(_mm256_srli_epi16(h, 1), m16));
        q[6] = _mm256_or_si256(q[6], _mm256_and_si256(_mm256_srli_epi16(h, 2), m16));
        q[7] = _mm256_or_si256(q[7], _mm256_and_si256(_mm256_srli_epi16(h, 3), m16));
      }
      for (int t = 0; t < NT; ++t) {
        const int8_t* a = acts[t].qs + ba * kQK;
        __m256i s32;
        if constexpr (kQ5) {
          // Four products of 31 · 127 pairs stay below 2^15 in int16, eight
          // would not: widen each half separately.
          __m256i lo = _mm256_maddubs_epi16(q[0], Bcast4(a));
          __m256i hi = _mm256_maddubs_epi16(q[4], Bcast4(a + 16));
          for (int c = 1; c < 4; ++c) {
            lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(q[c], Bcast4(a + 4 * c)));
            hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(q[4 + c], Bcast4(a + 16 + 4 * c)));
          }
          s32 = _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_madd_epi16(hi, ones));
        } else {
          // Eight products of 15 · 127 pairs stay below 2^15 in int16.
          __m256i s16 = _mm256_maddubs_epi16(q[0], Bcast4(a));
          for (int c = 1; c < 8; ++c) {
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(q[c], Bcast4(a + 4 * c)));
          }
          s32 = _mm256_madd_epi16(s16, ones);
        }
        const __m256 s = _mm256_cvtepi32_ps(s32);
        acc[t] = _mm256_fmadd_ps(s, _mm256_mul_ps(d, _mm256_set1_ps(acts[t].d[ba])), acc[t]);
        acc[t] = _mm256_fmadd_ps(off, _mm256_set1_ps(acts[t].sa[ba]), acc[t]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    if (rows == 8) {
      _mm256_storeu_ps(y + t * ldy, acc[t]);
    } else {
      float tmp[8];
      _mm256_storeu_ps(tmp, acc[t]);
      for (int i = 0; i < rows; ++i) y[t * ldy + i] = tmp[i];
    }
  }
}

template <DType T>
using TileFn = void (*)(float*, int64_t, const uint8_t*, int64_t, int64_t, const ActQ8*, int64_t,
                        int, int, bool);

template <DType T>
TileFn<T> TileFor(int nt) {
  static constexpr TileFn<T> kFns[kMaxTile] = {HalfGroupTile<T, 1>, HalfGroupTile<T, 2>,
                                               HalfGroupTile<T, 3>, HalfGroupTile<T, 4>};
  return kFns[nt - 1];
}

constexpr int64_t kOnTheFlyBlocks = 64;

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
    for (int64_t kb = 0; kb < nb; kb += packed ? nb : kOnTheFlyBlocks) {
      const int64_t kb1 = packed ? nb : (kb + kOnTheFlyBlocks < nb ? kb + kOnTheFlyBlocks : nb);
      const uint8_t* wg;
      if (packed) {
        wg = static_cast<const uint8_t*>(w.data) + (r / kPackRows) * nb * pb;
      } else {
        PackGroup(tmp, static_cast<const uint8_t*>(w.data) + r * row_bytes, row_bytes, rows, T, kb,
                  kb1);
        wg = tmp;
      }
      for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTile) {
        const int nt = static_cast<int>(n_tokens - t0 < kMaxTile ? n_tokens - t0 : kMaxTile);
        for (int t = 0; t < nt; ++t) {
          acts[t] = ActQ8View(static_cast<const uint8_t*>(xq) + (t0 + t) * act_row_bytes, w.n_in);
        }
        for (int half = 0; half < 2 && 8 * half < rows; ++half) {
          const int hrows = rows - 8 * half < 8 ? rows - 8 * half : 8;
          TileFor<T>(nt)(y + t0 * ldy + r + 8 * half, ldy, wg, kb1 - kb, pb, acts, kb, half, hrows,
                         kb > 0);
        }
      }
    }
  }
}

// K-quants (Q4_K, Q5_K, Q6_K) against Q8_K activations, one weight row
// times a tile of NT tokens. Each super-block's scales and mins are decoded
// once and its quants unpacked once per 64 (Q4_K/Q5_K) or 128 (Q6_K)
// elements, then applied to every token of the tile; per token and
// super-block that leaves one maddubs + madd per 32 elements and the float
// fold. Integer sums per super-block are exact, so a token's result does not
// depend on the tile it is computed in.
constexpr int kKTile = 4;

// Broadcasts int16 element e (0..7) of each 128-bit lane to the whole lane.
inline __m256i Int16Bcast(int e) {
  return _mm256_set1_epi16(static_cast<int16_t>(((2 * e + 1) << 8) | (2 * e)));
}

// Q4_K/Q5_K packed 6-bit scales and mins (12 bytes) -> scales: the 8 sub-block
// scales as int16 in both lanes; mins_dup: m0,m0,m1,m1,...,m7,m7 as int16,
// to madd against the 16 activation bsums.
inline void DecodeScalesK4(const uint8_t* packed, __m256i* scales, __m256i* mins_dup) {
  constexpr uint32_t kMask1 = 0x3f3f3f3f, kMask2 = 0x0f0f0f0f, kMask3 = 0x03030303;
  uint32_t u[4];
  std::memcpy(u, packed, 12);
  u[3] = ((u[2] >> 4) & kMask2) | (((u[1] >> 6) & kMask3) << 4);  // mins 4..7
  const uint32_t mins_lo = u[1] & kMask1;                         // mins 0..3
  u[1] = (u[2] & kMask2) | (((u[0] >> 6) & kMask3) << 4);         // scales 4..7
  u[2] = mins_lo;
  u[0] &= kMask1;  // scales 0..3
  const __m256i sm =
      _mm256_cvtepu8_epi16(_mm_set_epi32(static_cast<int>(u[3]), static_cast<int>(u[2]),
                                         static_cast<int>(u[1]), static_cast<int>(u[0])));
  const __m128i sc = _mm256_castsi256_si128(sm), mn = _mm256_extracti128_si256(sm, 1);
  *scales = _mm256_set_m128i(sc, sc);
  *mins_dup = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
}

template <DType T, int NT>
void KRowTile(float* y, int64_t ldy, const uint8_t* row, int64_t nb, const BlockQ8_K* const* acts) {
  constexpr bool kQ5 = T == DType::kQ5_K;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m256i sumi[NT];
    float dw;
    if constexpr (T == DType::kQ6_K) {
      const BlockQ6_K* x = reinterpret_cast<const BlockQ6_K*>(row) + i;
      dw = F16ToF32(x->d);
      // The -32 offset of every quant, through the 16-element activation sums.
      const __m256i sc16 =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x->scales)));
      for (int t = 0; t < NT; ++t) {
        const __m256i bsums =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acts[t][i].bsums));
        sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5));
      }
      const __m256i m3 = _mm256_set1_epi8(3);
      for (int j = 0; j < 2; ++j) {
        const uint8_t* ql = x->ql + 64 * j;
        const uint8_t* qh = x->qh + 32 * j;
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
        const __m256i b2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
        const __m256i bh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
        const __m256i q[4] = {
            _mm256_or_si256(_mm256_and_si256(b1, m4),
                            _mm256_slli_epi16(_mm256_and_si256(bh, m3), 4)),
            _mm256_or_si256(_mm256_and_si256(b2, m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 2), m3), 4)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 4), m3), 4)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 6), m3), 4)),
        };
        // Both lanes hold this half's 8 scales; quants vector c spans
        // sub-blocks 2c (low lane) and 2c + 1 (high lane).
        const __m128i sc8 =
            _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x->scales + 8 * j)));
        const __m256i scl = _mm256_set_m128i(sc8, sc8);
        for (int c = 0; c < 4; ++c) {
          const __m256i scale = _mm256_shuffle_epi8(
              scl, _mm256_set_m128i(_mm256_castsi256_si128(Int16Bcast(2 * c + 1)),
                                    _mm256_castsi256_si128(Int16Bcast(2 * c))));
          for (int t = 0; t < NT; ++t) {
            const __m256i a = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(acts[t][i].qs + 128 * j + 32 * c));
            sumi[t] =
                _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[c], a), scale));
          }
        }
      }
    } else {
      using Block = std::conditional_t<kQ5, BlockQ5_K, BlockQ4_K>;
      const Block* x = reinterpret_cast<const Block*>(row) + i;
      dw = F16ToF32(x->d);
      const float dmin = F16ToF32(x->dmin);
      __m256i scales, mins_dup;
      DecodeScalesK4(x->scales, &scales, &mins_dup);
      // The mins' term goes straight into the float accumulators.
      for (int t = 0; t < NT; ++t) {
        const __m256i bsums =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acts[t][i].bsums));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins_dup)),
                                 _mm256_set1_ps(-dmin * acts[t][i].d), acc[t]);
        sumi[t] = _mm256_setzero_si256();
      }
      for (int j = 0; j < 4; ++j) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qs + 32 * j));
        __m256i lo = _mm256_and_si256(bits, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
        if constexpr (kQ5) {
          // Bit 2j of qh[l] is bit 4 of the low quant, bit 2j + 1 of the high;
          // masked first, so the 16-bit shifts move nothing across bytes.
          const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qh));
          lo = _mm256_or_si256(
              lo, _mm256_slli_epi16(
                      _mm256_srl_epi16(
                          _mm256_and_si256(hb, _mm256_set1_epi8(static_cast<char>(1 << (2 * j)))),
                          _mm_cvtsi32_si128(2 * j)),
                      4));
          hi = _mm256_or_si256(
              hi, _mm256_slli_epi16(
                      _mm256_srl_epi16(
                          _mm256_and_si256(hb, _mm256_set1_epi8(static_cast<char>(2 << (2 * j)))),
                          _mm_cvtsi32_si128(2 * j + 1)),
                      4));
        }
        const __m256i scale_lo = _mm256_shuffle_epi8(scales, Int16Bcast(2 * j));
        const __m256i scale_hi = _mm256_shuffle_epi8(scales, Int16Bcast(2 * j + 1));
        for (int t = 0; t < NT; ++t) {
          const int8_t* a = acts[t][i].qs + 64 * j;
          const __m256i alo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
          const __m256i ahi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 32));
          sumi[t] = _mm256_add_epi32(
              sumi[t],
              _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, alo), scale_lo),
                               _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ahi), scale_hi)));
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_set1_ps(dw * acts[t][i].d), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ldy] = HSum(acc[t]);
}

template <DType T>
using KTileFn = void (*)(float*, int64_t, const uint8_t*, int64_t, const BlockQ8_K* const*);

template <DType T>
KTileFn<T> KTileFor(int nt) {
  static constexpr KTileFn<T> kFns[kKTile] = {KRowTile<T, 1>, KRowTile<T, 2>, KRowTile<T, 3>,
                                              KRowTile<T, 4>};
  return kFns[nt - 1];
}

// Rows in groups of 16 and, inside a group, tiles of kKTile tokens, so a
// tile's activations stay in L1 while the group's rows (L2) stream past.
template <DType T>
void MatMulK(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t act_row_bytes,
             int64_t n_tokens, int64_t r0, int64_t r1) {
  const int64_t nb = w.n_in / kQKK;
  const int64_t rb = RowBytes(T, w.n_in);
  const BlockQ8_K* acts[kKTile];
  for (int64_t g = r0; g < r1; g += kPackRows) {
    const int64_t g1 = g + kPackRows < r1 ? g + kPackRows : r1;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kKTile) {
      const int nt = static_cast<int>(n_tokens - t0 < kKTile ? n_tokens - t0 : kKTile);
      for (int t = 0; t < nt; ++t) {
        acts[t] = reinterpret_cast<const BlockQ8_K*>(static_cast<const uint8_t*>(xq) +
                                                     (t0 + t) * act_row_bytes);
      }
      const KTileFn<T> tile = KTileFor<T>(nt);
      for (int64_t r = g; r < g1; ++r) {
        tile(y + t0 * ldy + r, ldy, static_cast<const uint8_t*>(w.data) + r * rb, nb, acts);
      }
    }
  }
}

template <DType T>
inline __m256 LoadW(const uint8_t* row, int64_t k) {
  if constexpr (T == DType::kF16) {
    return HalfToFloat8(row + 2 * k);
  } else if constexpr (T == DType::kBF16) {
    const __m256i h =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
}

// F32 / F16 / BF16 weights: 4 rows x NT tokens, one 8-lane FMA accumulator
// each, so each converted weight vector feeds NT tokens. A (row, token) sum
// runs in the same order whatever the tile.
template <DType T, int NT>
void FloatTile(float* y, int64_t ldy, const uint8_t* w0, int64_t rb, const float* const* x,
               int64_t n) {
  __m256 acc[4][NT];
  for (int i = 0; i < 4; ++i) {
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < n; k += 8) {
    __m256 wv[4];
    for (int i = 0; i < 4; ++i) wv[i] = LoadW<T>(w0 + i * rb, k);
    for (int t = 0; t < NT; ++t) {
      const __m256 xv = _mm256_loadu_ps(x[t] + k);
      for (int i = 0; i < 4; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    for (int i = 0; i < 4; ++i) y[t * ldy + i] = HSum(acc[i][t]);
  }
}

// Rows in groups of 64 (256 KiB of f16 rows of 2048: L2) with tiles of 2
// tokens inside, so weights stream from memory once per call.
template <DType T>
void MatMulFloat(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                 int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  constexpr int kTokens = 2;
  constexpr int64_t kGroupRows = 64;
  const int64_t n = w.n_in, rb = RowBytes(T, n);
  const uint8_t* wd = static_cast<const uint8_t*>(w.data);  // (n_out, rb)
  auto x_row = [&](int64_t t) {
    return reinterpret_cast<const float*>(static_cast<const uint8_t*>(xq) + t * act_row_bytes);
  };
  // Rows past a multiple of 4 (and rows of other lengths) take the portable dot.
  const int64_t r4 = n % 8 == 0 ? r0 + (r1 - r0) / 4 * 4 : r0;
  for (int64_t g = r0; g < r4; g += kGroupRows) {
    const int64_t g1 = g + kGroupRows < r4 ? g + kGroupRows : r4;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokens) {
      const float* x[kTokens] = {x_row(t0), x_row(t0 + 1 < n_tokens ? t0 + 1 : t0)};
      for (int64_t r = g; r < g1; r += 4) {
        if (t0 + 1 < n_tokens) {
          FloatTile<T, 2>(y + t0 * ldy + r, ldy, wd + r * rb, rb, x, n);
        } else {
          FloatTile<T, 1>(y + t0 * ldy + r, ldy, wd + r * rb, rb, x, n);
        }
      }
    }
  }
  if (r4 < r1) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      MatMulScalar(y + t * ldy, ldy, w, x_row(t), act_row_bytes, 1, r4, r1);
    }
  }
}

}  // namespace

void MatMulAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t act_row_bytes,
                int64_t n_tokens, int64_t r0, int64_t r1) {
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
    case DType::kQ4_K:
      if (w.layout == WeightLayout::kPacked) {
        return MatMulPackedKAvx2(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
      }
      return MatMulK<DType::kQ4_K>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ5_K:
      if (w.layout == WeightLayout::kPacked) {
        return MatMulPackedKAvx2(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
      }
      return MatMulK<DType::kQ5_K>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kQ6_K:
      if (w.layout == WeightLayout::kPacked) {
        return MatMulPackedKAvx2(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
      }
      return MatMulK<DType::kQ6_K>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kF32:
      return MatMulFloat<DType::kF32>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kF16:
      return MatMulFloat<DType::kF16>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    case DType::kBF16:
      return MatMulFloat<DType::kBF16>(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    default:
      return MatMulScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
  }
}

void QuantizeRowQ8Avx2(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1) {
  int8_t* qs = static_cast<int8_t*>(y);  // (n_in)
  uint8_t* dp = reinterpret_cast<uint8_t*>(qs + n_in);
  const int64_t nb = n_in / kQK;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xb = x + (b - b0) * kQK;
    __m256 v[4];
    __m256 ax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      ax = _mm256_max_ps(ax, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(ax), _mm256_extractf128_ps(ax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amax = _mm_cvtss_f32(m);
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    __m256i sum = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], idv));  // nearest, ties to even
      sum = _mm256_add_epi32(sum, q[j]);
    }
    // int32 -> int8 with the lane order restored after the in-lane packs.
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * kQK), p);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    const float sa = d * static_cast<float>(_mm_cvtsi128_si32(s));
    std::memcpy(dp + 4 * b, &d, 4);
    std::memcpy(dp + 4 * (nb + b), &sa, 4);
  }
}

}  // namespace pdserve::kernels::internal

#else  // no AVX2 at compile time: never selected at run time.

namespace pdserve::kernels::internal {
void MatMulAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t act_row_bytes,
                int64_t n_tokens, int64_t r0, int64_t r1) {
  MatMulScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
}
void QuantizeRowQ8Avx2(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1) {
  QuantizeRowQ8Scalar(y, x, n_in, b0, b1);
}
}  // namespace pdserve::kernels::internal

#endif
