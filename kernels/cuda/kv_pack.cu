#include "kernels/cuda/kv_pack.h"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace pdserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Block (i, part) copies its share of span i; 16-byte moves when the span
// and both addresses allow.
template <bool kGather>
__global__ void __launch_bounds__(kThreads)
    CopyBlocksKernel(uint8_t* staging, uint8_t* const* blocks, int64_t block_bytes) {
  const int64_t i = blockIdx.x;
  uint8_t* blk = blocks[i];
  uint8_t* st = staging + i * block_bytes;
  const uint8_t* src = kGather ? blk : st;
  uint8_t* dst = kGather ? st : blk;
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool wide = block_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  if (wide) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int64_t j = first; j < block_bytes / 16; j += stride) d[j] = s[j];
  } else {
    for (int64_t j = first; j < block_bytes; j += stride) dst[j] = src[j];
  }
}

// Block (i, part) copies its share of span i.
__global__ void __launch_bounds__(kThreads) CopySpansKernel(const CopySpan* spans) {
  const CopySpan sp = spans[blockIdx.x];
  const auto* src = static_cast<const uint8_t*>(sp.src);
  auto* dst = static_cast<uint8_t*>(sp.dst);
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool wide = sp.bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  if (wide) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int64_t j = first; j < sp.bytes / 16; j += stride) d[j] = s[j];
  } else {
    for (int64_t j = first; j < sp.bytes; j += stride) dst[j] = src[j];
  }
}

dim3 Grid(int64_t block_bytes, int64_t n_blocks) {
  // Enough threads per block for one 16-byte move each, up to 8 blocks.
  const int64_t parts = std::clamp<int64_t>((block_bytes / 16 + kThreads - 1) / kThreads, 1, 8);
  return dim3(static_cast<unsigned>(n_blocks), static_cast<unsigned>(parts));
}

}  // namespace

cudaError_t CopySpans(const CopySpan* spans, int64_t n_spans, int64_t max_span_bytes,
                      cudaStream_t stream) {
  if (n_spans == 0 || max_span_bytes == 0) return cudaSuccess;
  if (n_spans < 0 || n_spans > 0x7fffffff || max_span_bytes < 0) return cudaErrorInvalidValue;
  PDS_LAUNCH(Grid(max_span_bytes, n_spans), dim3(kThreads), 0, stream, CopySpansKernel)(spans);
  return cudaGetLastError();
}

cudaError_t GatherBlocks(void* staging, const void* const* blocks, int64_t block_bytes,
                         int64_t n_blocks, cudaStream_t stream) {
  if (n_blocks == 0 || block_bytes == 0) return cudaSuccess;
  PDS_LAUNCH(Grid(block_bytes, n_blocks), dim3(kThreads), 0, stream, CopyBlocksKernel<true>)
  (static_cast<uint8_t*>(staging),
   const_cast<uint8_t* const*>(reinterpret_cast<const uint8_t* const*>(blocks)), block_bytes);
  return cudaGetLastError();
}

cudaError_t ScatterBlocks(void* const* blocks, const void* staging, int64_t block_bytes,
                          int64_t n_blocks, cudaStream_t stream) {
  if (n_blocks == 0 || block_bytes == 0) return cudaSuccess;
  PDS_LAUNCH(Grid(block_bytes, n_blocks), dim3(kThreads), 0, stream, CopyBlocksKernel<false>)
  (const_cast<uint8_t*>(static_cast<const uint8_t*>(staging)),
   reinterpret_cast<uint8_t* const*>(blocks), block_bytes);
  return cudaGetLastError();
}

}  // namespace pdserve::kernels::cuda
