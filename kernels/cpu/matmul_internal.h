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

// Packed K-quant layout (Q4_K, Q5_K, Q6_K), for decode GEMV with AVX2:
// rows grouped by 8 (one register of float lanes; the last group
// zero-padded), each group's super-blocks in k order, each laid out as
//   qs:   4 parts (64 elements) x 8 chunks x 32 bytes; part j chunk c lane i
//         holds 4 bytes of row i: the low nibble of byte b is the low 4 bits
//         of element 64j+4c+b, the high nibble those of element 64j+32+4c+b;
//   qh:   Q5_K per part 2 x 32 bytes, vector v, lane i byte b: bit c' holds
//         bit 4 of element 64j+4(4v+c')+b, bit 4+c' that of 64j+32+4(4v+c')+b;
//         Q6_K per part 4 x 32 bytes, vector 2h+v: bits 2c'..2c'+1 hold bits
//         4-5 of element 64j+32h+4(4v+c')+b;
//   sc:   sub-block scales in pairs, 16 bytes per pair, lane i bytes (a, b):
//         Q4_K/Q5_K pair j = sub-blocks (2j, 2j+1), uint8; Q6_K pair 2j+g =
//         sub-blocks (4j+g, 4j+2+g), int8 (the low and high nibbles of chunks
//         4g..4g+3 of part j);
//   mins: Q4_K/Q5_K, paired like sc;
//   d:    8 f16; dmin: Q4_K/Q5_K, 8 f16.
// Quants as unsigned bytes for vpmaddubsw and scales pre-decoded from 6 bits:
// 148 / 180 / 210 bytes per row and super-block against ggml's 144 / 176 / 210.
inline constexpr int kKPackRows = 8;
struct KPackLayout {
  int qh, sc, mins, d, dmin, bytes;  // byte offsets in a packed super-block group
};
constexpr KPackLayout KLayout(DType t) {
  switch (t) {
    case DType::kQ4_K:
      return {1024, 1024, 1088, 1152, 1168, 1184};
    case DType::kQ5_K:
      return {1024, 1280, 1344, 1408, 1424, 1440};
    case DType::kQ6_K:
      return {1024, 1536, 0, 1664, 0, 1680};
    default:
      return {0, 0, 0, 0, 0, 0};
  }
}

// One K-quant super-block of one row, decoded to integers: q the unsigned
// quants (0..15, 0..31, 0..63), sc the sub-block scales (8, or Q6_K's 16
// signed), m the mins (Q4_K/Q5_K). Value: d·sc·q − dmin·m, or d·sc·(q − 32).
struct KSuperBlock {
  uint8_t q[kQKK];
  int sc[16];
  int m[8];
  uint16_t d, dmin;  // f16
};
void DecodeGgmlK(KSuperBlock* out, const uint8_t* block, DType t);
void EncodeGgmlK(uint8_t* block, const KSuperBlock& in, DType t);
// Lane `row` (< 8) of a packed super-block group.
void DecodePackedK(KSuperBlock* out, const uint8_t* group_block, DType t, int row);
// Packs super-blocks [0, nb) of rows_valid (<= 8) ggml rows starting at src.
void PackKGroup(uint8_t* dst, const uint8_t* src, int64_t row_bytes, int rows_valid, DType t,
                int64_t nb);

// Packed K-quant GEMV/GEMM over output rows [r0, r1), r0 a multiple of 8.
void MatMulPackedKScalar(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                         int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1);
void MatMulPackedKAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                       int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1);
// AVX-512 VNNI: two groups per register (16 rows), tiles of 8 tokens; r0 a
// multiple of 16.
void MatMulPackedKAvx512(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                         int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1);

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
// nb super-blocks of Q8_K activations; the same bytes as QuantizeRow(kQ8_K).
void QuantizeRowQ8KAvx512(BlockQ8_K* y, const float* x, int64_t nb);
// Dispatches: AVX-512 when active, QuantizeRow otherwise.
void QuantizeRowQ8K(void* y, const float* x, int64_t n);

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
