#include "kernels/cuda/quantize.h"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace pdserve::kernels::cuda {
namespace {

constexpr int kPrepareThreads = 512;

__device__ __forceinline__ float ActValue(const ActSource& src, const float* xr, const float* ur,
                                          int64_t k, float scale) {
  switch (src.op) {
    case ActOp::kRmsNorm:
      return __fmul_rn(__fmul_rn(xr[k], scale), src.norm_w[k]);
    case ActOp::kSwiGlu: {
      const float g = xr[k];
      return __fmul_rn(__fdiv_rn(g, 1.0f + expf(-g)), ur[k]);
    }
    default:
      return xr[k];
  }
}

__device__ __forceinline__ void WriteRounded(const ActOutputs& out, int64_t idx, float v) {
  if (out.f32 != nullptr) out.f32[idx] = v;
  if (out.f16 != nullptr) out.f16[idx] = __float2half_rn(v);
}

// One block per output row.
__global__ void __launch_bounds__(kPrepareThreads)
    PrepareKernel(ActOutputs out, ActSource src, int64_t n) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t in_r = src.row_index != nullptr ? src.row_index[r] : r;
  const float* xr = src.x + in_r * src.ldx;
  const float* ur = src.op == ActOp::kSwiGlu ? src.up + in_r * src.ldx : nullptr;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = blockDim.x / kWarp;

  float scale = 1.0f;
  if (src.op == ActOp::kRmsNorm) {  // uniform over the block: the barriers are safe
    float ss = 0;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) ss += xr[k] * xr[k];
    ss = BlockSum(ss, scratch);
    scale = 1.0f / sqrtf(ss / static_cast<float>(n) + src.eps);
  }
  const bool want_rounded = out.f32 != nullptr || out.f16 != nullptr;
  const int64_t out_base = r * n;

  // Blocks of 32: the CPU's QuantizeRowQ8 (d = amax / 127, quants rounded
  // half to even), and the quantized values for kQ8_1 rounding.
  const bool q8_1_rounded = want_rounded && out.rounding == ActRounding::kQ8_1;
  if (out.q8_1 != nullptr || q8_1_rounded) {
    const int64_t nb = n / kQK;
    int8_t* qs = out.q8_1 != nullptr
                     ? static_cast<int8_t*>(out.q8_1) + r * (n + nb * 2 * static_cast<int64_t>(4))
                     : nullptr;
    float* dd = qs != nullptr ? reinterpret_cast<float*>(qs + n) : nullptr;  // (nb)
    for (int64_t b = warp; b < nb; b += n_warps) {
      const int64_t k = b * kQK + lane;
      const float v = ActValue(src, xr, ur, k, scale);
      const float amax = WarpMax(fabsf(v));
      const float d = amax / 127;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      const int q = __float2int_rn(__fmul_rn(v, id));
      if (qs != nullptr) {
        qs[k] = static_cast<int8_t>(q);
        const int isum = WarpSumInt(q);
        if (lane == 0) {
          dd[b] = d;
          dd[nb + b] = __fmul_rn(d, static_cast<float>(isum));
        }
      }
      if (q8_1_rounded) WriteRounded(out, out_base + k, __fmul_rn(static_cast<float>(q), d));
    }
  }

  // Blocks of 256: the CPU's Q8_K quantization (scale from the element of
  // largest magnitude, quants in [-127, 127]), dequantized again.
  if (want_rounded && out.rounding == ActRounding::kQ8_K) {
    for (int64_t b = warp; b < n / kQKK; b += n_warps) {
      float v[kQKK / kWarp];
      float amax = 0, vmax = 0;
#pragma unroll
      for (int i = 0; i < kQKK / kWarp; ++i) {
        v[i] = ActValue(src, xr, ur, b * kQKK + i * kWarp + lane, scale);
        if (fabsf(v[i]) > amax) {
          amax = fabsf(v[i]);
          vmax = v[i];
        }
      }
      // Any element of largest magnitude gives the same dequantized values.
#pragma unroll
      for (int m = 16; m > 0; m >>= 1) {
        const float oa = __shfl_xor_sync(0xffffffffu, amax, m);
        const float ov = __shfl_xor_sync(0xffffffffu, vmax, m);
        if (oa > amax) {
          amax = oa;
          vmax = ov;
        }
      }
      const float iscale = amax != 0 ? -127.f / vmax : 0.0f;
      const float d = amax != 0 ? 1 / iscale : 0.0f;
#pragma unroll
      for (int i = 0; i < kQKK / kWarp; ++i) {
        const int q = amax != 0 ? MinInt(127, __float2int_rn(__fmul_rn(iscale, v[i]))) : 0;
        WriteRounded(out, out_base + b * kQKK + i * kWarp + lane,
                     __fmul_rn(static_cast<float>(q), d));
      }
    }
  }

  if (want_rounded && out.rounding == ActRounding::kNone) {
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
      WriteRounded(out, out_base + k, ActValue(src, xr, ur, k, scale));
    }
  }
}

__global__ void DequantizeToF16Kernel(__half* y, const uint8_t* w, DType type, int64_t row_bytes,
                                      int64_t n_in) {
  const int64_t r = blockIdx.x;
  const uint8_t* row = w + r * row_bytes;
  for (int64_t k = threadIdx.x; k < n_in; k += blockDim.x) {
    y[r * n_in + k] = __float2half_rn(DequantElement(type, row, k));
  }
}

__global__ void F16ToF32Kernel(float* y, const __half* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = __half2float(x[i]);
  }
}

}  // namespace

cudaError_t PrepareActivations(const ActOutputs& out, const ActSource& src, int64_t n_rows,
                               int64_t n, cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  if ((out.q8_1 != nullptr || out.rounding == ActRounding::kQ8_1) && n % kQK != 0) {
    return cudaErrorInvalidValue;
  }
  if (out.rounding == ActRounding::kQ8_K && n % kQKK != 0) return cudaErrorInvalidValue;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_rows)), dim3(kPrepareThreads), 0, stream, PrepareKernel)
  (out, src, n);
  return cudaGetLastError();
}

cudaError_t DequantizeToF16(__half* y, const void* w, DType type, int64_t n_out, int64_t n_in,
                            cudaStream_t stream) {
  if (n_out == 0) return cudaSuccess;
  const int64_t row_bytes = RowBytes(type, n_in);
  if (row_bytes < 0) return cudaErrorInvalidValue;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_out)), dim3(256), 0, stream, DequantizeToF16Kernel)
  (y, static_cast<const uint8_t*>(w), type, row_bytes, n_in);
  return cudaGetLastError();
}

cudaError_t F16ToF32(float* y, const __half* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  PDS_LAUNCH(dim3(blocks), dim3(256), 0, stream, F16ToF32Kernel)(y, x, n);
  return cudaGetLastError();
}

}  // namespace pdserve::kernels::cuda
