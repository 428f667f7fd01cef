#include "kernels/cuda/gemm.h"

#include <limits>

namespace pdserve::kernels::cuda {

cublasStatus_t GemmF16(cublasHandle_t handle, float* y, int64_t ldy, const __half* w, int64_t n_out,
                       int64_t n_in, const __half* x, int64_t n_tokens, bool accumulate,
                       cudaStream_t stream) {
  if (n_tokens == 0 || n_out == 0) return CUBLAS_STATUS_SUCCESS;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (n_out > kMax || n_in > kMax || n_tokens > kMax || ldy > kMax) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (cublasStatus_t s = cublasSetStream(handle, stream); s != CUBLAS_STATUS_SUCCESS) return s;
  // Column-major view: Yᵀ (n_out × n_tokens, ld ldy) = W (stored as n_in ×
  // n_out, transposed) · Xᵀ (n_in × n_tokens).
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_out),
                      static_cast<int>(n_tokens), static_cast<int>(n_in), &alpha, w, CUDA_R_16F,
                      static_cast<int>(n_in), x, CUDA_R_16F, static_cast<int>(n_in), &beta, y,
                      CUDA_R_32F, static_cast<int>(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

}  // namespace pdserve::kernels::cuda
