// Matrix products for prefill chunks through cuBLAS: f16 operands on the
// tensor cores, f32 accumulation and output. Weights are dequantized to f16
// first (quantize.h DequantizeToF16), once at load or per call.
// CPU reference: kernels/cpu/matmul.h MatMulRef.
#pragma once

#include <cstdint>

#include "kernels/cuda/cublas_compat.h"

namespace pdserve::kernels::cuda {

// y[t * ldy + r] = Σ_k w[r][k] · x[t][k] (or += when accumulate) for
// t < n_tokens, r < n_out; w (n_out, n_in) and x (n_tokens, n_in) row-major
// f16. Runs on `stream` (set on the handle).
cublasStatus_t GemmF16(cublasHandle_t handle, float* y, int64_t ldy, const __half* w, int64_t n_out,
                       int64_t n_in, const __half* x, int64_t n_tokens, bool accumulate,
                       cudaStream_t stream);

}  // namespace pdserve::kernels::cuda
