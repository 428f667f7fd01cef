// AVX-512 VNNI matmul over packed K-quant weights (Q4_K, Q5_K, Q6_K in 8-row
// groups, layout in matmul_internal.h) against Q8_K activations: the decode
// GEMV and the batched/prefill GEMM. Two neighbouring groups fill one zmm
// register (rows 0-7 from the first, 8-15 from the second), so every
// accumulator holds 16 output rows and there are no horizontal sums. Per 4
// bytes of a row, vpdpbusd against the 4 matching activation bytes broadcast
// to every lane adds 4 products into the row's int32 lane. Each run of 8
// (Q6_K) or 16 (Q4_K, Q5_K) elements of a row has its own dot, small enough
// for int16, which one vpdpwssd scales by the sub-block's scale into the
// super-block sum. Tiles of up to 8 tokens reuse each unpacked weight vector,
// so a decode batch of 8 reads every weight once; past 8 tokens (prefill) a
// block of pairs is unpacked once into a per-thread buffer that every tile
// loads from.
#include <algorithm>
#include <new>
#include <utility>

#include "kernels/cpu/matmul_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__AVX512VL__)
#include <immintrin.h>

namespace pdserve::kernels::internal {
namespace {

constexpr int kMaxTokens = 8;             // tokens per tile
constexpr int kUnpackedVectors = 64;      // a pair's super-block, unpacked: 256 bytes x 16 rows
constexpr int64_t kPrefetchBytes = 2048;  // weight prefetch distance per group, as on AVX2

// acc + vpdpbusd(q, the 4 bytes at p broadcast), the broadcast folded into
// the instruction's memory operand (GCC emits a separate vpbroadcastd for
// the intrinsics; folding measured 2-6% on the Q6_K tile).
inline __m512i DotBcast4(__m512i acc, __m512i q, const int8_t* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0"
      : "+v"(acc)
      : "v"(q), "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}

inline __m128i Load128(const void* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline __m256i Load256(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
// 16 bytes of each group: lanes 0-3 from p0, 4-7 from p1 (8 rows each at 2
// bytes per row).
inline __m256i Load2x128(const uint8_t* p0, const uint8_t* p1) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(Load128(p0)), Load128(p1), 1);
}
// 32 bytes of each group: int32 lanes 0-7 are rows 0-7 of p0, 8-15 those of p1.
inline __m512i Load2x256(const uint8_t* p0, const uint8_t* p1) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(Load256(p0)), Load256(p1), 1);
}

// Shifts each 16-bit lane left by S bits (right when S < 0).
template <int S>
inline __m512i Shift16(__m512i v) {
  if constexpr (S > 0) {
    return _mm512_slli_epi16(v, S);
  } else if constexpr (S < 0) {
    return _mm512_srli_epi16(v, -S);
  } else {
    return v;
  }
}

// Quants of chunk C (4 elements per row) of part j, half H (0: the low
// nibbles, elements 64j+4C..; 1: the high ones, 64j+32+4C..) as unsigned
// bytes, high bits merged. The high bits are masked after 16-bit shifts that
// keep each wanted bit inside its own byte.
template <DType T, int H, int C>
inline __m512i Quants(const uint8_t* p0, const uint8_t* p1, int j) {
  constexpr KPackLayout kL = KLayout(T);
  constexpr int kV = C / 4, kCc = C % 4;
  const __m512i raw = Load2x256(p0 + 256 * j + 32 * C, p1 + 256 * j + 32 * C);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512i q = H == 0 ? _mm512_and_si512(raw, m4) : _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
  if constexpr (T == DType::kQ5_K) {
    // Bit c' of a byte is bit 4 of chunk 4kV+c''s low-nibble element, bit 4+c' that of its
    // high-nibble element.
    constexpr int kShift = H == 0 ? 4 - kCc : -kCc;
    const int off = kL.qh + 64 * j + 32 * kV;
    const __m512i h = Load2x256(p0 + off, p1 + off);
    q = _mm512_or_si512(q, _mm512_and_si512(Shift16<kShift>(h), _mm512_set1_epi8(0x10)));
  } else if constexpr (T == DType::kQ6_K) {
    // Bits 2kCc..2kCc+1 of each byte to bits 4-5. For chunks 0 and 1 a byte
    // lookup on the low nibble rather than a shift and mask each: one AND
    // serves both, and the shuffles run on the port the shifts do not.
    const int off = kL.qh + 128 * j + 64 * H + 32 * kV;
    const __m512i h = Load2x256(p0 + off, p1 + off);
    if constexpr (kCc < 2) {
      const __m512i lut = kCc == 0 ? _mm512_set1_epi32(0x30201000)
                                   : _mm512_set4_epi32(0x30303030, 0x20202020, 0x10101010, 0);
      q = _mm512_or_si512(q, _mm512_shuffle_epi8(lut, _mm512_and_si512(h, m4)));
    } else {
      q = _mm512_or_si512(q, _mm512_and_si512(Shift16<4 - 2 * kCc>(h), _mm512_set1_epi8(0x30)));
    }
  }
  return q;
}

// Q4_K/Q5_K part j (64 elements): sub-blocks 2j (the low nibbles, H = 0)
// and 2j+1 (the high ones) of 32 elements, each as two 16-element runs
// (chunks 0-3 and 4-7) whose dots fit int16: Σ q·a within ±16·15·127 = 30480
// for Q4_K; for Q5_K Σ(q−16)·a within ±16·16·127 = 32512, the offset started
// from the activation sums (starts[t][k] = -16 · bsums[k]) and added back
// once per super-block (PairTile). Each run takes its sub-block's scale by
// one vpdpwssd, as for Q6_K below. A half's 8 quant vectors are unpacked once
// for all NT tokens.
template <DType T, int NT, bool kU>
inline void Part(const uint8_t* p0, const uint8_t* p1, int j, const int8_t* const* a,
                 const int32_t (*starts)[16], __m512i* sumi, const __m512i* uq) {
  constexpr KPackLayout kL = KLayout(T);
  constexpr bool kQ5 = T == DType::kQ5_K;
  // Scale pair j: bytes (sc_2j, sc_2j+1) of row i, as int16 pairs (sc, 0).
  const __m512i x = _mm512_cvtepu8_epi16(Load2x128(p0 + kL.sc + 16 * j, p1 + kL.sc + 16 * j));
  const __m512i s[2] = {_mm512_and_si512(x, _mm512_set1_epi32(0xFFFF)), _mm512_srli_epi32(x, 16)};
  auto half = [&]<int H>() {
    __m512i q[8];
    if constexpr (kU) {
      for (int c = 0; c < 8; ++c) q[c] = _mm512_load_si512(uq + 16 * j + 8 * H + c);
    } else {
      q[0] = Quants<T, H, 0>(p0, p1, j), q[1] = Quants<T, H, 1>(p0, p1, j);
      q[2] = Quants<T, H, 2>(p0, p1, j), q[3] = Quants<T, H, 3>(p0, p1, j);
      q[4] = Quants<T, H, 4>(p0, p1, j), q[5] = Quants<T, H, 5>(p0, p1, j);
      q[6] = Quants<T, H, 6>(p0, p1, j), q[7] = Quants<T, H, 7>(p0, p1, j);
    }
    for (int t = 0; t < NT; ++t) {
      const int8_t* xa = a[t] + 64 * j + 32 * H;
      __m512i lo = kQ5 ? _mm512_set1_epi32(starts[t][4 * j + 2 * H]) : _mm512_setzero_si512();
      __m512i hi = kQ5 ? _mm512_set1_epi32(starts[t][4 * j + 2 * H + 1]) : _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        lo = DotBcast4(lo, q[c], xa + 4 * c);
        hi = DotBcast4(hi, q[4 + c], xa + 16 + 4 * c);
      }
      sumi[t] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sumi[t], lo, s[H]), hi, s[H]);
    }
  };
  half.template operator()<0>();
  half.template operator()<1>();
}

// Q6_K. The -32 offset of every quant starts each dot (from the activation
// sums), so a dot over 8 elements, Σ(q−32)·a, lies within ±8·32·127 = 32512
// (QuantQ8_K keeps activations in [-127, 127]) and the two halves of a
// 16-element sub-block each take the scale by one vpdpwssd (the dot in the
// low int16 of its lane) straight into the super-block sum, where vpmulld on
// a 16-element dot (two uops) plus an add did that before, and the offset
// needed its own pass over the sums.

// -32 · Σa over each run of 8 activations of a block: starts[m] for
// elements 8m..8m+7. (The second load runs 4 bytes past the quants, into the
// block's sums, for the odd 4-element sums that are dropped.)
inline void OffsetStarts(int32_t* starts, const int8_t* qs) {
  const __m512i k32 = _mm512_set1_epi8(32);
  for (int k = 0; k < 4; ++k) {
    // 32·Σ of each 4 plus 32·Σ of the 4 after them.
    const __m512i s8 = _mm512_dpbusd_epi32(
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), k32, _mm512_loadu_si512(qs + 64 * k)), k32,
        _mm512_loadu_si512(qs + 64 * k + 4));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(starts + 8 * k),
                        _mm512_cvtepi64_epi32(_mm512_sub_epi32(_mm512_setzero_si512(), s8)));
  }
}

// Part j (64 elements) of a Q6_K super-block for NT tokens; a[t] points at
// token t's 256 activations, starts[t] at its OffsetStarts.
template <int NT, bool kU>
inline void PartQ6(const uint8_t* p0, const uint8_t* p1, int j, const int8_t* const* a,
                   const int32_t* starts, __m512i* sumi, const __m512i* uq) {
  constexpr KPackLayout kL = KLayout(DType::kQ6_K);
  // Scale pair 2j+g holds sub-blocks (4j+g, 4j+2+g) as bytes (a_i, b_i) of
  // row i; as int16 pairs (sc, 0) per row lane, s[H][g] is sub-block 4j+2H+g.
  __m512i s[2][2];
  for (int g = 0; g < 2; ++g) {
    const int off = kL.sc + 32 * j + 16 * g;
    const __m512i x = _mm512_cvtepi8_epi16(Load2x128(p0 + off, p1 + off));
    s[0][g] = _mm512_and_si512(x, _mm512_set1_epi32(0xFFFF));
    s[1][g] = _mm512_srli_epi32(x, 16);
  }
  // Sub-block g of half H: chunks 4g..4g+3 (elements 64j+32H+16g..), whose
  // quants are unpacked once for all tokens; per token, the 8-element runs
  // 8j+4H+2g (chunks 4g, 4g+1) and the next (4g+2, 4g+3), each scaled by
  // vpdpwssd against (sc, 0) (its upper int16 is the sign).
  auto sub_block = [&]<int H, int G>() {
    constexpr int kRun = 4 * H + 2 * G;
    __m512i q0, q1, q2, q3;
    if constexpr (kU) {
      const __m512i* u = uq + 16 * j + 8 * H + 4 * G;
      q0 = _mm512_load_si512(u), q1 = _mm512_load_si512(u + 1);
      q2 = _mm512_load_si512(u + 2), q3 = _mm512_load_si512(u + 3);
    } else {
      q0 = Quants<DType::kQ6_K, H, 4 * G>(p0, p1, j);
      q1 = Quants<DType::kQ6_K, H, 4 * G + 1>(p0, p1, j);
      q2 = Quants<DType::kQ6_K, H, 4 * G + 2>(p0, p1, j);
      q3 = Quants<DType::kQ6_K, H, 4 * G + 3>(p0, p1, j);
    }
    for (int t = 0; t < NT; ++t) {
      const int8_t* x = a[t] + 64 * j + 32 * H + 16 * G;
      const int32_t* st = starts + 32 * t + 8 * j + kRun;
      const __m512i lo = DotBcast4(DotBcast4(_mm512_set1_epi32(st[0]), q0, x), q1, x + 4);
      const __m512i hi = DotBcast4(DotBcast4(_mm512_set1_epi32(st[1]), q2, x + 8), q3, x + 12);
      sumi[t] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sumi[t], lo, s[H][G]), hi, s[H][G]);
    }
  };
  sub_block.template operator()<0, 0>();
  sub_block.template operator()<0, 1>();
  sub_block.template operator()<1, 0>();
  sub_block.template operator()<1, 1>();
}

// Two 8-row groups (g1 may repeat g0 when only one is left) times NT tokens
// over all nb super-blocks; `rows` masks the valid output rows; `prefetch`
// on the first token tile of the pair only (the later ones find its weights
// in cache, and the prefetches cost them ~5% at 512 tokens). A token's
// result does not depend on NT (integer sums are exact and the float steps run
// in the same order), so batches match solo decoding.
template <DType T, int NT, bool kU>
void PairTile(float* y, int64_t ldy, const uint8_t* g0, const uint8_t* g1, int64_t nb,
              const BlockQ8_K* const* acts, __mmask16 rows, bool prefetch, const int32_t* q6_starts,
              const __m512i* unpacked) {
  const int64_t group_bytes = nb * KLayout(T).bytes;
  constexpr KPackLayout kL = KLayout(T);
  constexpr bool kQ6 = T == DType::kQ6_K;
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* p0 = g0 + ib * kL.bytes;
    const uint8_t* p1 = g1 + ib * kL.bytes;
    const __m512i* uq = nullptr;
    if constexpr (kU) uq = unpacked + kUnpackedVectors * ib;
    if (prefetch) {
      // Each group's stream kPrefetchBytes ahead; past the group's end the
      // stream continues in the same group of the next pair (two groups
      // on), so the start of both next groups is in cache when the pair
      // ends (measured: without that, batch-1 streaming ran at half the
      // AVX2 path's speed). Integer arithmetic: the address may lie past the
      // matrix, which a prefetch never faults on.
      int64_t ahead = ib * kL.bytes + kPrefetchBytes;
      if (ahead >= group_bytes) ahead += group_bytes;
      const uintptr_t a0 = reinterpret_cast<uintptr_t>(g0) + ahead;
      const uintptr_t a1 = a0 + group_bytes;
      for (int off = 0; off < kL.bytes; off += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(a0 + off), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(a1 + off), _MM_HINT_T0);
      }
    }
    const __m512 d = _mm512_cvtph_ps(Load2x128(p0 + kL.d, p1 + kL.d));
    __m512i sumi[NT];
    if constexpr (kQ6) {
      alignas(64) int32_t own[NT * 32];  // when not shared
      const int8_t* a[NT];
      for (int t = 0; t < NT; ++t) {
        a[t] = acts[t][ib].qs;
        if (!q6_starts) OffsetStarts(own + 32 * t, a[t]);
        sumi[t] = _mm512_setzero_si512();
      }
      const int32_t* starts = q6_starts ? q6_starts + ib * NT * 32 : own;
      for (int j = 0; j < 4; ++j) PartQ6<NT, kU>(p0, p1, j, a, starts, sumi, uq);
    } else {
      // The mins: -dmin · Σ_s m_s · bsum32_s, straight into the float sums.
      // Per token, pairs of activation sums (int16 x 2 in an int32) lined up
      // with the min pairs, broadcast by permutes from registers: bsum32 of
      // sub-blocks (2j, 2j+1) land in int32 elements 0, 1, 4, 5. Q5_K's
      // offset comes back the same way: 16 · Σ_s sc_s · bsum32_s.
      __m512i pairs[NT], back[NT];
      const __m512 dmin = _mm512_cvtph_ps(Load2x128(p0 + kL.dmin, p1 + kL.dmin));
      const __m256i ones = _mm256_set1_epi16(1);
      for (int t = 0; t < NT; ++t) {
        const __m256i s32 = _mm256_madd_epi16(Load256(acts[t][ib].bsums), ones);
        pairs[t] = _mm512_castsi256_si512(_mm256_packs_epi32(s32, s32));
        sumi[t] = back[t] = _mm512_setzero_si512();  // the mins' sum first, then the quants'
      }
      for (int j = 0; j < 4; ++j) {
        const __m512i m =
            _mm512_cvtepu8_epi16(Load2x128(p0 + kL.mins + 16 * j, p1 + kL.mins + 16 * j));
        const __m512i sc =
            _mm512_cvtepu8_epi16(Load2x128(p0 + kL.sc + 16 * j, p1 + kL.sc + 16 * j));
        const __m512i idx = _mm512_set1_epi32(j < 2 ? j : j + 2);
        for (int t = 0; t < NT; ++t) {
          const __m512i b = _mm512_permutexvar_epi32(idx, pairs[t]);
          sumi[t] = _mm512_dpwssd_epi32(sumi[t], m, b);
          if constexpr (T == DType::kQ5_K) back[t] = _mm512_dpwssd_epi32(back[t], sc, b);
        }
      }
      alignas(64) int32_t starts[NT][16];
      const int8_t* a[NT];
      for (int t = 0; t < NT; ++t) {
        acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(sumi[t]),
                                  _mm512_mul_ps(dmin, _mm512_set1_ps(acts[t][ib].d)), acc[t]);
        sumi[t] = _mm512_slli_epi32(back[t], 4);
        a[t] = acts[t][ib].qs;
        if constexpr (T == DType::kQ5_K) {
          const __m512i b16 = _mm512_cvtepi16_epi32(Load256(acts[t][ib].bsums));
          _mm512_store_si512(starts[t],
                             _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(b16, 4)));
        }
      }
      for (int j = 0; j < 4; ++j) Part<T, NT, kU>(p0, p1, j, a, starts, sumi, uq);
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[t]),
                               _mm512_mul_ps(d, _mm512_set1_ps(acts[t][ib].d)), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ldy, rows, acc[t]);
}

template <DType T>
using TileFn = void (*)(float*, int64_t, const uint8_t*, const uint8_t*, int64_t,
                        const BlockQ8_K* const*, __mmask16, bool, const int32_t*, const __m512i*);

template <DType T, bool kU>
TileFn<T> TileFor(int nt) {
  static constexpr TileFn<T> kFns[kMaxTokens] = {
      PairTile<T, 1, kU>, PairTile<T, 2, kU>, PairTile<T, 3, kU>, PairTile<T, 4, kU>,
      PairTile<T, 5, kU>, PairTile<T, 6, kU>, PairTile<T, 7, kU>, PairTile<T, 8, kU>};
  return kFns[nt - 1];
}

// A pair's quant vectors, as Part/PartQ6 take them (vector 16j + 8H + C of
// each super-block), written once so that every token tile after the first
// loads them instead of unpacking them again: the unpacking (shifts, masks
// and the high-bit merge) was 1.5-4.5 vector ops per 8 vpdpbusd.
template <DType T, int H, int... C>
inline void UnpackHalf(__m512i* o, const uint8_t* p0, const uint8_t* p1, int j,
                       std::integer_sequence<int, C...>) {
  ((_mm512_store_si512(o + C, Quants<T, H, C>(p0, p1, j))), ...);
}

template <DType T>
void UnpackPair(__m512i* dst, const uint8_t* g0, const uint8_t* g1, int64_t nb) {
  constexpr KPackLayout kL = KLayout(T);
  for (int64_t ib = 0; ib < nb; ++ib, dst += kUnpackedVectors) {
    const uint8_t* p0 = g0 + ib * kL.bytes;
    const uint8_t* p1 = g1 + ib * kL.bytes;
    for (int j = 0; j < 4; ++j) {
      UnpackHalf<T, 0>(dst + 16 * j, p0, p1, j, std::make_integer_sequence<int, 8>());
      UnpackHalf<T, 1>(dst + 16 * j + 8, p0, p1, j, std::make_integer_sequence<int, 8>());
    }
  }
}

// This thread's buffer of at least n vectors (grown, never shrunk: its
// largest size is a few pairs of the widest matrix, under 2 MiB).
__m512i* UnpackBuffer(int64_t n) {
  struct Buffer {
    void* p = nullptr;
    int64_t cap = 0;
    ~Buffer() { ::operator delete (p, std::align_val_t{64}); }
  };
  thread_local Buffer buf;
  if (buf.cap < n) {
    ::operator delete (buf.p, std::align_val_t{64});
    buf.p = ::operator new (static_cast<size_t>(n) * sizeof(__m512i), std::align_val_t{64});
    buf.cap = n;
  }
  return static_cast<__m512i*>(buf.p);
}

// Group pairs in order (the matrix is two neighbouring sequential streams),
// token tiles inside a pair so its weights (2 x nb super-blocks, L2) are read
// from memory once. Q6_K runs blocks of up to 8 pairs per token tile, as
// many as kBlockBytes of weights (so they stay in L2), and computes the
// tile's dot starts, which depend on the tokens only, once for the block:
// per pair they were ~14% of the tile (8 pairs measured 2-3% faster than 4).
// With more than one token tile (prefill), every type runs in blocks of
// pairs whose quants are unpacked once into a per-thread buffer (at most
// kBlockBytes, or one pair) and loaded by every tile.
constexpr int64_t kBlockBytes = 512 << 10;
constexpr int64_t kQ6MaxBlocks = 64;  // super-blocks of starts on the stack (64 KiB)

template <DType T>
void MatMulPackedK(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                   int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  constexpr KPackLayout kL = KLayout(T);
  constexpr int kPairRows = 2 * kKPackRows;
  const int64_t nb = w.n_in / kQKK;
  const int64_t group_bytes = nb * kL.bytes;
  const bool unpack = n_tokens > kMaxTokens;
  const int64_t pair_vectors = nb * kUnpackedVectors;
  const bool shared_starts = T == DType::kQ6_K && nb <= kQ6MaxBlocks;
  const int64_t block_pairs = unpack ? std::clamp<int64_t>(kBlockBytes / (pair_vectors * 64), 1, 8)
                                     : std::clamp<int64_t>(kBlockBytes / (2 * group_bytes), 1, 8);
  const int64_t block_rows = shared_starts || unpack ? block_pairs * kPairRows : kPairRows;
  __m512i* const buf = unpack ? UnpackBuffer(block_pairs * pair_vectors) : nullptr;
  alignas(64) int32_t starts[T == DType::kQ6_K ? kQ6MaxBlocks * kMaxTokens * 32 : 1];
  const BlockQ8_K* acts[kMaxTokens];
  for (int64_t rb = r0; rb < r1; rb += block_rows) {
    const int64_t rb1 = r1 - rb < block_rows ? r1 : rb + block_rows;
    // r0 is a multiple of 16 (MatMul's split), so r starts a group; with 8
    // rows or fewer left the second group does not exist: compute the first
    // twice and store its lanes only.
    auto groups = [&](int64_t r, const uint8_t** g0, const uint8_t** g1) {
      *g0 = static_cast<const uint8_t*>(w.data) + (r / kKPackRows) * group_bytes;
      *g1 = r1 - r > kKPackRows ? *g0 + group_bytes : *g0;
    };
    if (unpack) {
      for (int64_t r = rb, k = 0; r < rb1; r += kPairRows, ++k) {
        const uint8_t *g0, *g1;
        groups(r, &g0, &g1);
        UnpackPair<T>(buf + k * pair_vectors, g0, g1, nb);
      }
    }
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokens) {
      const int nt = static_cast<int>(n_tokens - t0 < kMaxTokens ? n_tokens - t0 : kMaxTokens);
      for (int t = 0; t < nt; ++t) {
        acts[t] = reinterpret_cast<const BlockQ8_K*>(static_cast<const uint8_t*>(xq) +
                                                     (t0 + t) * act_row_bytes);
      }
      if (shared_starts) {
        for (int64_t ib = 0; ib < nb; ++ib) {
          for (int t = 0; t < nt; ++t) OffsetStarts(starts + (ib * nt + t) * 32, acts[t][ib].qs);
        }
      }
      for (int64_t r = rb, k = 0; r < rb1; r += kPairRows, ++k) {
        const int rows = static_cast<int>(r1 - r < kPairRows ? r1 - r : kPairRows);
        const __mmask16 mask = static_cast<__mmask16>((1u << rows) - 1);
        const uint8_t *g0, *g1;
        groups(r, &g0, &g1);
        const int32_t* st = shared_starts ? starts : nullptr;
        if (unpack) {
          TileFor<T, true>(nt)(y + t0 * ldy + r, ldy, g0, g1, nb, acts, mask, false, st,
                               buf + k * pair_vectors);
        } else {
          TileFor<T, false>(nt)(y + t0 * ldy + r, ldy, g0, g1, nb, acts, mask, t0 == 0, st,
                                nullptr);
        }
      }
    }
  }
}

}  // namespace

void MatMulPackedKAvx512(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
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

#else  // no AVX-512 at compile time: never selected at run time.

namespace pdserve::kernels::internal {
void MatMulPackedKAvx512(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                         int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  MatMulPackedKScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
}
}  // namespace pdserve::kernels::internal

#endif
