// Device helpers shared by the kernels in kernels/cuda/*.cu.
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_compat.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"

namespace pdserve::kernels::cuda {

inline constexpr int kWarp = 32;

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
__device__ __forceinline__ int WarpSumInt(int v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds one
// float per warp; the block must be whole warps. Contains barriers: every
// thread of the block must call it.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = blockDim.x / kWarp;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0;
  for (int i = 0; i < n_warps; ++i) total += scratch[i];
  return total;
}

__device__ __forceinline__ int MinInt(int a, int b) { return a < b ? a : b; }

__device__ __forceinline__ float LoadHalf(const void* p) {
  return __half2float(*static_cast<const __half*>(p));
}
__device__ __forceinline__ float Bf16ToFloat(uint16_t bits) {
  return __int_as_float(static_cast<int>(static_cast<uint32_t>(bits) << 16));
}
// Four bytes from a 2-byte aligned address.
__device__ __forceinline__ int LoadInt2Aligned(const uint8_t* p) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<int>(static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16));
}

// Element k of a row of `type` (row points at the row's first block), with
// the same float operations as kernels/quant.cc's DequantizeRow.
__device__ __forceinline__ float DequantElement(DType type, const uint8_t* row, int64_t k) {
  switch (type) {
    case DType::kF32:
      return reinterpret_cast<const float*>(row)[k];
    case DType::kF16:
      return LoadHalf(row + 2 * k);
    case DType::kBF16:
      return Bf16ToFloat(reinterpret_cast<const uint16_t*>(row)[k]);
    case DType::kQ4_0: {
      const uint8_t* b = row + (k / kQK) * sizeof(BlockQ4_0);
      const int j = static_cast<int>(k % kQK);
      const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
      return __fmul_rn(LoadHalf(b), static_cast<float>(q - 8));
    }
    case DType::kQ4_1: {
      const uint8_t* b = row + (k / kQK) * sizeof(BlockQ4_1);
      const int j = static_cast<int>(k % kQK);
      const int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
      return __fadd_rn(__fmul_rn(LoadHalf(b), static_cast<float>(q)), LoadHalf(b + 2));
    }
    case DType::kQ5_0:
    case DType::kQ5_1: {
      const bool has_min = type == DType::kQ5_1;
      const uint8_t* b = row + (k / kQK) * (has_min ? sizeof(BlockQ5_1) : sizeof(BlockQ5_0));
      const int j = static_cast<int>(k % kQK);
      const uint8_t* qh = b + (has_min ? 4 : 2);
      const uint8_t* qs = qh + 4;
      const int lo = j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
      const int q = lo | (((qh[j / 8] >> (j % 8)) & 1) << 4);
      if (has_min) return __fadd_rn(__fmul_rn(LoadHalf(b), static_cast<float>(q)), LoadHalf(b + 2));
      return __fmul_rn(LoadHalf(b), static_cast<float>(q - 16));
    }
    case DType::kQ8_0: {
      const uint8_t* b = row + (k / kQK) * sizeof(BlockQ8_0);
      const int j = static_cast<int>(k % kQK);
      return __fmul_rn(LoadHalf(b), static_cast<float>(static_cast<int8_t>(b[2 + j])));
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const bool q5 = type == DType::kQ5_K;
      const uint8_t* b = row + (k / kQKK) * (q5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K));
      const int j = static_cast<int>(k % kQKK);
      const int chunk = j / 64, l = j % 32, hi = (j % 64) / 32;
      const int is = 2 * chunk + hi;  // sub-block of 32
      const uint8_t* scales = b + 4;
      int sc, m;
      if (is < 4) {
        sc = scales[is] & 63;
        m = scales[is + 4] & 63;
      } else {
        sc = (scales[is + 4] & 0xF) | ((scales[is - 4] >> 6) << 4);
        m = (scales[is + 4] >> 4) | ((scales[is] >> 6) << 4);
      }
      const uint8_t* qh = b + 4 + kKScaleBytes;  // Q5_K only
      const uint8_t qb = b[4 + kKScaleBytes + (q5 ? kQKK / 8 : 0) + chunk * 32 + l];
      int q = hi ? (qb >> 4) : (qb & 0xF);
      if (q5) q |= ((qh[l] >> is) & 1) << 4;
      const float d1 = __fmul_rn(LoadHalf(b), static_cast<float>(sc));
      const float m1 = __fmul_rn(LoadHalf(b + 2), static_cast<float>(m));
      return __fsub_rn(__fmul_rn(d1, static_cast<float>(q)), m1);
    }
    case DType::kQ6_K: {
      const uint8_t* b = row + (k / kQKK) * sizeof(BlockQ6_K);
      const int j = static_cast<int>(k % kQKK);
      const int half = j / 128, e = j % 128, quarter = e / 32, l = e % 32;
      const uint8_t* ql = b + half * 64;
      const uint8_t* qh = b + kQKK / 2 + half * 32;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + kQKK / 2 + kQKK / 4) + half * 8;
      const uint8_t lo = ql[l + (quarter & 1) * 32];
      const int q =
          ((quarter < 2 ? (lo & 0xF) : (lo >> 4)) | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
      const float d = LoadHalf(b + kQKK / 2 + kQKK / 4 + kQKK / 16);
      return __fmul_rn(__fmul_rn(d, static_cast<float>(sc[l / 16 + 2 * quarter])),
                       static_cast<float>(q));
    }
    default:
      return 0.0f;
  }
}

inline unsigned CeilDiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace pdserve::kernels::cuda
