// Per-ISA entry points behind matmul.h's dispatch. Internal to kernels/.
#pragma once

#include <cstdint>

#include "kernels/cpu/matmul.h"

namespace pdserve::kernels::internal {

// Output rows [r0, r1) of y = x · Wᵀ for n_tokens encoded activation rows of
// act_row_bytes each.
void MatMulScalar(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                  int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1);
void MatMulAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t act_row_bytes,
                int64_t n_tokens, int64_t r0, int64_t r1);
void MatMulAvx512(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                  int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1);

// Encodes one activation row of n_in floats.
void QuantizeRowQ8_1Avx512(void* y, const float* x, int64_t n_in);
void QuantizeRowQ8_1Avx2(void* y, const float* x, int64_t n_in);

}  // namespace pdserve::kernels::internal
