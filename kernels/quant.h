// Block layouts of the quantized types pdserve computes with, byte-for-byte
// as ggml defines them, and reference (de)quantization. Leaf header.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace pdserve::kernels {

inline constexpr int kQK = 32;    // elements per block for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1
inline constexpr int kQKK = 256;  // elements per super-block for K-quants
inline constexpr int kKScaleBytes = 12;

// w = d * (q - 8); qs[j] holds element j (low nibble) and j + 16 (high nibble).
struct BlockQ4_0 {
  uint16_t d;  // f16
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// w = d * q + m.
struct BlockQ4_1 {
  uint16_t d;  // f16
  uint16_t m;  // f16
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// w = d * (q - 16), q 5 bits: the low 4 as in Q4_0's qs, bit 4 of element j
// in bit j of qh (little-endian uint32).
struct BlockQ5_0 {
  uint16_t d;  // f16
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

// w = d * q + m, q 5 bits laid out as in Q5_0.
struct BlockQ5_1 {
  uint16_t d;  // f16
  uint16_t m;  // f16
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

// w = d * q.
struct BlockQ8_0 {
  uint16_t d;  // f16
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34);

// Activations for Q4_1/Q8_0/Q4_0 dot products: s = d * sum(qs).
struct BlockQ8_1 {
  uint16_t d;  // f16
  uint16_t s;  // f16
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_1) == 36);

// 8 sub-blocks of 32; 6-bit scales and mins packed in `scales`.
// w = d * sc * q - dmin * m.
struct BlockQ4_K {
  uint16_t d;     // f16, super-block scale for the scales
  uint16_t dmin;  // f16, super-block scale for the mins
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

// Q4_K's layout plus a fifth bit: for the 64 elements qs[32c..32c+31] covers
// (chunk c), bit 2c of qh[l] is bit 4 of element 64c + l and bit 2c + 1 that
// of element 64c + 32 + l. w = d * sc * q - dmin * m.
struct BlockQ5_K {
  uint16_t d;     // f16
  uint16_t dmin;  // f16
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
static_assert(sizeof(BlockQ5_K) == 176);

// 16 sub-blocks of 16; 6-bit quants (low 4 bits in ql, high 2 in qh).
// w = d * scale * (q - 32).
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;  // f16
};
static_assert(sizeof(BlockQ6_K) == 210);

// Activations for K-quant dot products.
struct BlockQ8_K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];  // sum of each group of 16 qs
};
static_assert(sizeof(BlockQ8_K) == 292);

// Unpacks the 6-bit scale and min of sub-block j (0..7) of a Q4_K block.
inline void GetScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Reference dequantization of `n` elements (a whole number of blocks) of a
// type with FindDType(t)->matmul == true.
void DequantizeRow(float* y, const void* x, DType t, int64_t n);

// Reference quantization of `n` floats into type `t` (F32, F16, BF16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K). Used by tests and the GGUF writer to
// synthesize models; not on the hot path.
void QuantizeRow(void* y, const float* x, DType t, int64_t n);

}  // namespace pdserve::kernels
