// Element-wise and row-wise ops of a Llama block on the GPU, one launch per
// call over many rows. CPU references: kernels/cpu/ops.h (same math in float;
// sums in a different order). Pointers are device memory; every function
// returns the launch's error (cudaSuccess when it was queued).
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_compat.h"
#include "kernels/dtype.h"

namespace pdserve::kernels::cuda {

// x[r] = dequantized row tokens[r] of table (n_vocab rows of n elements in
// `type`): the token embedding lookup.
cudaError_t EmbedRows(float* x, const void* table, DType type, const int32_t* tokens,
                      int64_t n_rows, int64_t n, cudaStream_t stream);

// y[r] = x[r] / sqrt(mean(x[r]²) + eps) * w for n_rows rows of n; y may alias x.
cudaError_t RmsNorm(float* y, const float* x, const float* w, int64_t n_rows, int64_t n, float eps,
                    cudaStream_t stream);

// Rotates the adjacent pairs of the first n_rot dims of each of n_heads heads
// of row r of x (row stride ldx) by position pos[r]'s angles, read from
// cos_sin (n_positions, n_rot) interleaved cos/sin (Model::RopeRow's table).
cudaError_t Rope(float* x, int64_t ldx, const int32_t* pos, const float* cos_sin, int64_t n_rows,
                 int n_heads, int head_dim, int n_rot, cudaStream_t stream);

// y = silu(gate) * up over n elements; y may alias gate.
cudaError_t SwiGlu(float* y, const float* gate, const float* up, int64_t n, cudaStream_t stream);

// Numerically stable softmax of each of n_rows rows of n, in place.
cudaError_t Softmax(float* x, int64_t n_rows, int64_t n, cudaStream_t stream);

// y += x over n elements.
cudaError_t AddInplace(float* y, const float* x, int64_t n, cudaStream_t stream);

}  // namespace pdserve::kernels::cuda
