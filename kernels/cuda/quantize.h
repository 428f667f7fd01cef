// Activation encoding for the matrix products, fused with the op that
// produces the activations (RMSNorm, SwiGLU, or none), and weight
// dequantization to f16 for the cuBLAS path.
//
// The encodings mirror the CPU's (kernels/cpu/matmul.h ActFormat) bit for bit
// where they can, so GPU and CPU runs of one model pick the same greedy
// tokens: Q8_1 quants, scales and block sums are the bytes the CPU writes,
// and the f32/f16 outputs can carry the same rounding (quantized, then
// dequantized) when the consumer's CPU counterpart would have quantized.
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_compat.h"
#include "kernels/dtype.h"

namespace pdserve::kernels::cuda {

enum class ActOp {
  kCopy,     // value = x
  kRmsNorm,  // value = x / sqrt(mean(x²) + eps) * norm_w
  kSwiGlu,   // value = silu(x) * up
};

struct ActSource {
  ActOp op = ActOp::kCopy;
  const float* x = nullptr;  // (rows, ldx); kSwiGlu: the gate
  int64_t ldx = 0;
  // Output row r reads input row row_index[r] (device memory), or r if null.
  const int32_t* row_index = nullptr;
  const float* norm_w = nullptr;  // kRmsNorm: (n)
  float eps = 0;
  const float* up = nullptr;  // kSwiGlu: (rows, ldx), same rows as x
};

// Rounding applied to the f32 and f16 outputs.
enum class ActRounding {
  kNone,
  kQ8_1,  // through int8 per block of 32 (the CPU's kQ8_1 activations)
  kQ8_K,  // through int8 per block of 256 (the CPU's kQ8_K activations)
};

struct ActOutputs {
  // (n_rows, ActRowBytes(kQ8_1, n)): the CPU's ActFormat::kQ8_1 row layout,
  // [n int8 quants][n/32 float d][n/32 float d·Σq]. n % 32 == 0.
  void* q8_1 = nullptr;
  float* f32 = nullptr;   // (n_rows, n)
  __half* f16 = nullptr;  // (n_rows, n)
  ActRounding rounding = ActRounding::kNone;
};

// Computes n values per row from src and writes every requested output.
cudaError_t PrepareActivations(const ActOutputs& out, const ActSource& src, int64_t n_rows,
                               int64_t n, cudaStream_t stream);

// y (n_out, n_in) row-major f16 = dequantized w (n_out rows of `type`).
cudaError_t DequantizeToF16(__half* y, const void* w, DType type, int64_t n_out, int64_t n_in,
                            cudaStream_t stream);

// y (n, f32) = x (n, f16): for tests and checks.
cudaError_t F16ToF32(float* y, const __half* x, int64_t n, cudaStream_t stream);

}  // namespace pdserve::kernels::cuda
