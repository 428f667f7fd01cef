// Moving one layer's KV blocks between the paged cache and a contiguous
// staging buffer, for the transport: pack before a send, unpack after a
// receive. CPU reference: one memcpy per block.
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_compat.h"

namespace pdserve::kernels::cuda {

// staging (n_blocks, block_bytes) = the blocks in order. blocks: device array
// of n_blocks device pointers, each to block_bytes bytes.
cudaError_t GatherBlocks(void* staging, const void* const* blocks, int64_t block_bytes,
                         int64_t n_blocks, cudaStream_t stream);

// The reverse: block i = staging[i].
cudaError_t ScatterBlocks(void* const* blocks, const void* staging, int64_t block_bytes,
                          int64_t n_blocks, cudaStream_t stream);

// One device-to-device copy of `bytes` bytes.
struct CopySpan {
  const void* src;
  void* dst;
  int64_t bytes;
};

// Every span of `spans` (a device array of n_spans) in one launch: the IPC
// receiver's per-layer copy of the sender's blocks into its own, which as one
// cudaMemcpyAsync per block ran at ~11 GB/s on an H200 (launch-bound).
// Spans must not overlap each other's destinations.
cudaError_t CopySpans(const CopySpan* spans, int64_t n_spans, int64_t max_span_bytes,
                      cudaStream_t stream);

}  // namespace pdserve::kernels::cuda
