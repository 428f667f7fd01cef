#include "kernels/cuda/ops.h"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace pdserve::kernels::cuda {
namespace {

constexpr int kRowThreads = 256;

__global__ void EmbedRowsKernel(float* x, const uint8_t* table, DType type, int64_t row_bytes,
                                const int32_t* tokens, int64_t n) {
  const int64_t r = blockIdx.x;
  const uint8_t* row = table + static_cast<int64_t>(tokens[r]) * row_bytes;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) x[r * n + k] = DequantElement(type, row, k);
}

__global__ void RmsNormKernel(float* y, const float* x, const float* w, int64_t n, float eps) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * n;
  float ss = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) ss += xr[k] * xr[k];
  ss = BlockSum(ss, scratch);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    y[r * n + k] = __fmul_rn(__fmul_rn(xr[k], scale), w[k]);
  }
}

__global__ void RopeKernel(float* x, int64_t ldx, const int32_t* pos, const float* cos_sin,
                           int n_heads, int head_dim, int n_rot) {
  const int64_t r = blockIdx.x;
  const float* cs = cos_sin + static_cast<int64_t>(pos[r]) * n_rot;
  const int half = n_rot / 2;
  for (int j = threadIdx.x; j < n_heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    float* v = x + r * ldx + h * head_dim + 2 * i;
    const float c = cs[2 * i], s = cs[2 * i + 1];
    const float a = v[0], b = v[1];
    v[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    v[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
  }
}

__global__ void SwiGluKernel(float* y, const float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    y[i] = __fmul_rn(__fdiv_rn(g, 1.0f + expf(-g)), up[i]);
  }
}

__global__ void SoftmaxKernel(float* x, int64_t n) {
  __shared__ float scratch[32];
  float* xr = x + blockIdx.x * n;
  float m = -INFINITY;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) m = fmaxf(m, xr[k]);
  // Block max through the sum helper's layout: reduce per warp, then across warps.
  m = WarpMax(m);
  __syncthreads();
  if (threadIdx.x % kWarp == 0) scratch[threadIdx.x / kWarp] = m;
  __syncthreads();
  float bm = -INFINITY;
  for (int i = 0; i < static_cast<int>(blockDim.x / kWarp); ++i) bm = fmaxf(bm, scratch[i]);
  float s = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const float e = expf(xr[k] - bm);
    xr[k] = e;
    s += e;
  }
  s = BlockSum(s, scratch);
  const float inv = 1.0f / s;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) xr[k] *= inv;
}

__global__ void AddKernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] += x[i];
  }
}

unsigned ElementwiseBlocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kRowThreads - 1) / kRowThreads, 65535));
}

}  // namespace

cudaError_t EmbedRows(float* x, const void* table, DType type, const int32_t* tokens,
                      int64_t n_rows, int64_t n, cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_rows)), dim3(kRowThreads), 0, stream, EmbedRowsKernel)
  (x, static_cast<const uint8_t*>(table), type, RowBytes(type, n), tokens, n);
  return cudaGetLastError();
}

cudaError_t RmsNorm(float* y, const float* x, const float* w, int64_t n_rows, int64_t n, float eps,
                    cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_rows)), dim3(kRowThreads), 0, stream, RmsNormKernel)
  (y, x, w, n, eps);
  return cudaGetLastError();
}

cudaError_t Rope(float* x, int64_t ldx, const int32_t* pos, const float* cos_sin, int64_t n_rows,
                 int n_heads, int head_dim, int n_rot, cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_rows)), dim3(128), 0, stream, RopeKernel)
  (x, ldx, pos, cos_sin, n_heads, head_dim, n_rot);
  return cudaGetLastError();
}

cudaError_t SwiGlu(float* y, const float* gate, const float* up, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(ElementwiseBlocks(n)), dim3(kRowThreads), 0, stream, SwiGluKernel)
  (y, gate, up, n);
  return cudaGetLastError();
}

cudaError_t Softmax(float* x, int64_t n_rows, int64_t n, cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_rows)), dim3(kRowThreads), 0, stream, SoftmaxKernel)
  (x, n);
  return cudaGetLastError();
}

cudaError_t AddInplace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(ElementwiseBlocks(n)), dim3(kRowThreads), 0, stream, AddKernel)(y, x, n);
  return cudaGetLastError();
}

}  // namespace pdserve::kernels::cuda
