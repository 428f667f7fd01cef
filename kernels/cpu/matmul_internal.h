// Internals shared by matmul*.cc: the encoded activation row, the packed
// weight layout and the per-ISA entry points behind matmul.h's dispatch.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cpu/matmul.h"
#include "kernels/quant.h"

namespace pdserve::kernels::internal {

// Rows per packed group: one AVX-512 register of int32 lanes.
inline constexpr int kPackRows = 16;

// View of one ActFormat::kQ8_1 row of n_in elements.
struct ActQ8 {
  const int8_t* qs;  // (n_in)
  const float* d;    // (n_in / 32) block scales
  const float* sa;   // (n_in / 32) d · Σqs of each block, exact
};
inline ActQ8 ActQ8View(const void* row, int64_t n_in) {
  const int8_t* qs = static_cast<const int8_t*>(row);
  const float* d = reinterpret_cast<const float*>(qs + n_in);
  return {qs, d, d + n_in / kQK};
}

// Packed layout. Rows are grouped by 16 (the last group zero-padded); a
// group stores its 32-blocks in k order, each block-group as
//   quants: Q4_0/Q4_1/Q5_0/Q5_1 4 x 64 bytes: chunk c, lane i holds bytes
//           qs[4c..4c+3] of row i, so the low nibbles are elements 4c..4c+3
//           and the high nibbles elements 16+4c..16+4c+3;
//           Q8_0 8 x 64 bytes: chunk c, lane i holds elements 4c..4c+3 of
//           row i as unsigned bytes q + 128 (vpdpbusd wants u8 x s8);
//   high:   Q5_0/Q5_1 only, 64 bytes: lane i byte j holds bit 4 of row i's
//           element 4c+j in bit c and of element 16+4c+j in bit 4+c (c < 4),
//           so one shift and mask per chunk lines them up with the nibbles;
//   d:      16 f16 scales; Q4_1/Q5_1 then 16 f16 mins.
// So chunk c of every type pairs with activation bytes 4c..4c+3 of the block.
constexpr bool IsQ5(DType t) { return t == DType::kQ5_0 || t == DType::kQ5_1; }
constexpr bool HasMin(DType t) { return t == DType::kQ4_1 || t == DType::kQ5_1; }
// Bytes before the f16 scales of a packed block-group: quants (and high bits).
constexpr int PackedQuantBytes(DType t) { return t == DType::kQ8_0 ? 512 : IsQ5(t) ? 320 : 256; }
inline int64_t PackedBlockBytes(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ8_0:
      return PackedQuantBytes(t) + (HasMin(t) ? 64 : 32);
    default:
      return 0;
  }
}
// Offsets inside a ggml block of those types: the quants, and Q5's qh.
inline int GgmlQsOffset(DType t) {
  return t == DType::kQ5_1 ? 8 : t == DType::kQ5_0 ? 6 : t == DType::kQ4_1 ? 4 : 2;
}
inline int GgmlQhOffset(DType t) { return t == DType::kQ5_1 ? 4 : 2; }

// Packs blocks [b0, b1) of the group whose first row is src (rows_valid <= 16
// rows of row_bytes each) into dst, which receives (b1 - b0) block-groups.
void PackGroup(uint8_t* dst, const uint8_t* src, int64_t row_bytes, int rows_valid, DType t,
               int64_t b0, int64_t b1);

// Output rows [r0, r1) of y = x · Wᵀ for n_tokens encoded activation rows of
// act_row_bytes each; r0 is a multiple of kPackRows.
void MatMulScalar(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                  int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1);
void MatMulAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t act_row_bytes,
                int64_t n_tokens, int64_t r0, int64_t r1);
void MatMulAvx512(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                  int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1);

// Encodes blocks [b0, b1) of one ActFormat::kQ8_1 row y of n_in elements
// from x, the floats of those blocks. All paths give the same bytes: quants
// round x · (127 / amax) half to even.
void QuantizeRowQ8Scalar(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1);
void QuantizeRowQ8Avx2(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1);
void QuantizeRowQ8Avx512(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1);
// Dispatches to the active ISA's QuantizeRowQ8*.
void QuantizeRowQ8(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1);

inline uint32_t LoadU32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint16_t LoadU16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

}  // namespace pdserve::kernels::internal
