// Matrix-vector products for decode steps (a few token rows): y = x · Wᵀ
// reading the weights once, in their GGUF block layout. CPU reference:
// kernels/cpu/matmul.h MatMul / MatMulQuantRef.
//
// Q4_0, Q4_1 and Q8_0 weights take activations in the CPU's ActFormat::kQ8_1
// layout (PrepareActivations' q8_1 output) and sum integer products per block
// with dp4a, as the CPU does: the results differ from the CPU's only by the
// order of the float block sums. Other types (F32, F16, BF16, Q5_0, Q5_1,
// Q4_K, Q5_K, Q6_K) take float activations and dequantize each weight.
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_compat.h"
#include "kernels/dtype.h"

namespace pdserve::kernels::cuda {

inline constexpr int kMaxMatVecTokens = 8;

// Whether MatVec reads kQ8_1 activations for this weight type (else floats).
bool MatVecTakesQ8_1(DType type);

// y[t * ldy + r] = Σ_k W[r][k] · a[t][k] (or += when accumulate) for
// t < n_tokens <= kMaxMatVecTokens and r < n_out. w: n_out rows of
// RowBytes(type, n_in) bytes. act: (n_tokens, ActRowBytes(kQ8_1, n_in))
// bytes, or (n_tokens, n_in) floats; see MatVecTakesQ8_1.
cudaError_t MatVec(float* y, int64_t ldy, const void* w, DType type, int64_t n_out, int64_t n_in,
                   const void* act, int64_t n_tokens, bool accumulate, cudaStream_t stream);

}  // namespace pdserve::kernels::cuda
