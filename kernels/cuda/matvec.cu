#include "kernels/cuda/matvec.h"

#include "kernels/cuda/common.cuh"

namespace pdserve::kernels::cuda {
namespace {

constexpr int kRowsPerBlock = 4;  // one warp per output row
constexpr int kThreads = kRowsPerBlock * kWarp;

// One warp per row; lane l takes blocks l, l + 32, ... and keeps the weights
// of a block in registers while it visits every token.
template <DType kType, int kTokens>
__global__ void __launch_bounds__(kThreads)
    MatVecQ8Kernel(float* y, int64_t ldy, const uint8_t* w, int64_t row_bytes, int64_t n_in,
                   const uint8_t* act, int64_t act_row_bytes, int64_t n_out, bool accumulate) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  if (r >= n_out) return;  // the whole warp leaves together
  const uint8_t* wr = w + r * row_bytes;
  const int64_t nb = n_in / kQK;
  constexpr int kWords = kType == DType::kQ8_0 ? 8 : 4;
  float sum[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) sum[t] = 0;

  for (int64_t b = lane; b < nb; b += kWarp) {
    int wq[kWords];
    float dw, mw = 0;
    if constexpr (kType == DType::kQ4_0) {
      const uint8_t* blk = wr + b * static_cast<int64_t>(sizeof(BlockQ4_0));
      dw = LoadHalf(blk);
#pragma unroll
      for (int i = 0; i < kWords; ++i) wq[i] = LoadInt2Aligned(blk + 2 + 4 * i);
    } else if constexpr (kType == DType::kQ4_1) {
      const uint8_t* blk = wr + b * static_cast<int64_t>(sizeof(BlockQ4_1));
      dw = LoadHalf(blk);
      mw = LoadHalf(blk + 2);
#pragma unroll
      for (int i = 0; i < kWords; ++i) wq[i] = reinterpret_cast<const int*>(blk + 4)[i];
    } else {
      const uint8_t* blk = wr + b * static_cast<int64_t>(sizeof(BlockQ8_0));
      dw = LoadHalf(blk);
#pragma unroll
      for (int i = 0; i < kWords; ++i) wq[i] = LoadInt2Aligned(blk + 2 + 4 * i);
    }
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const uint8_t* a = act + t * act_row_bytes;
      const int* aq = reinterpret_cast<const int*>(a + b * kQK);  // 32 int8
      const float* ad = reinterpret_cast<const float*>(a + n_in);
      const float da = ad[b], sa = ad[nb + b];
      int isum = 0;
      if constexpr (kType == DType::kQ8_0) {
#pragma unroll
        for (int i = 0; i < 8; ++i) isum = __dp4a(wq[i], aq[i], isum);
      } else {
        // Low nibbles are elements 4i..4i+3, high nibbles 16+4i..16+4i+3.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          isum = __dp4a(wq[i] & 0x0F0F0F0F, aq[i], isum);
          isum = __dp4a((wq[i] >> 4) & 0x0F0F0F0F, aq[4 + i], isum);
        }
      }
      // The CPU's per-block expression (kernels/cpu/matmul_scalar.cc).
      float block = __fmul_rn(__fmul_rn(dw, da), static_cast<float>(isum));
      if constexpr (kType == DType::kQ4_0) {
        block = __fsub_rn(block, __fmul_rn(__fmul_rn(8.0f, dw), sa));
      } else if constexpr (kType == DType::kQ4_1) {
        block = __fadd_rn(block, __fmul_rn(mw, sa));
      }
      sum[t] = __fadd_rn(sum[t], block);
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    const float s = WarpSum(sum[t]);
    if (lane == 0) {
      float* out = y + t * ldy + r;
      *out = accumulate ? *out + s : s;
    }
  }
}

template <int kTokens>
__global__ void __launch_bounds__(kThreads)
    MatVecF32Kernel(float* y, int64_t ldy, const uint8_t* w, DType type, int64_t row_bytes,
                    int64_t n_in, const float* x, int64_t n_out, bool accumulate) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  if (r >= n_out) return;
  const uint8_t* wr = w + r * row_bytes;
  float sum[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) sum[t] = 0;
  for (int64_t k = lane; k < n_in; k += kWarp) {
    const float wv = DequantElement(type, wr, k);
#pragma unroll
    for (int t = 0; t < kTokens; ++t) sum[t] += wv * x[t * n_in + k];
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    const float s = WarpSum(sum[t]);
    if (lane == 0) {
      float* out = y + t * ldy + r;
      *out = accumulate ? *out + s : s;
    }
  }
}

template <int kTokens>
cudaError_t LaunchTokens(float* y, int64_t ldy, const uint8_t* w, DType type, int64_t n_out,
                         int64_t n_in, const void* act, bool accumulate, cudaStream_t stream) {
  const dim3 grid(CeilDiv(n_out, kRowsPerBlock)), block(kThreads);
  const int64_t row_bytes = RowBytes(type, n_in);
  const auto* a = static_cast<const uint8_t*>(act);
  const int64_t act_row_bytes = n_in + n_in / kQK * 2 * 4;
  switch (type) {
    case DType::kQ4_0:
      PDS_LAUNCH(grid, block, 0, stream, MatVecQ8Kernel<DType::kQ4_0, kTokens>)
      (y, ldy, w, row_bytes, n_in, a, act_row_bytes, n_out, accumulate);
      break;
    case DType::kQ4_1:
      PDS_LAUNCH(grid, block, 0, stream, MatVecQ8Kernel<DType::kQ4_1, kTokens>)
      (y, ldy, w, row_bytes, n_in, a, act_row_bytes, n_out, accumulate);
      break;
    case DType::kQ8_0:
      PDS_LAUNCH(grid, block, 0, stream, MatVecQ8Kernel<DType::kQ8_0, kTokens>)
      (y, ldy, w, row_bytes, n_in, a, act_row_bytes, n_out, accumulate);
      break;
    default:
      PDS_LAUNCH(grid, block, 0, stream, MatVecF32Kernel<kTokens>)
      (y, ldy, w, type, row_bytes, n_in, static_cast<const float*>(act), n_out, accumulate);
      break;
  }
  return cudaGetLastError();
}

}  // namespace

bool MatVecTakesQ8_1(DType type) {
  return type == DType::kQ4_0 || type == DType::kQ4_1 || type == DType::kQ8_0;
}

cudaError_t MatVec(float* y, int64_t ldy, const void* w, DType type, int64_t n_out, int64_t n_in,
                   const void* act, int64_t n_tokens, bool accumulate, cudaStream_t stream) {
  if (n_tokens == 0 || n_out == 0) return cudaSuccess;
  if (RowBytes(type, n_in) < 0 || (MatVecTakesQ8_1(type) && n_in % kQK != 0)) {
    return cudaErrorInvalidValue;
  }
  const auto* wb = static_cast<const uint8_t*>(w);
  switch (n_tokens) {
    case 1:
      return LaunchTokens<1>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    case 2:
      return LaunchTokens<2>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    case 3:
      return LaunchTokens<3>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    case 4:
      return LaunchTokens<4>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    case 5:
      return LaunchTokens<5>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    case 6:
      return LaunchTokens<6>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    case 7:
      return LaunchTokens<7>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    case 8:
      return LaunchTokens<8>(y, ldy, wb, type, n_out, n_in, act, accumulate, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pdserve::kernels::cuda
