// gpu_bench's decode figures beyond the batch-1 step (bench/gpu_bench.cc):
// step time by batch size through either product path, and MatVec alone on
// llama-3-8b's matrix shapes. CUDA builds only.
#pragma once

#include <cstdint>

#include "engine/cuda/cuda_runner.h"

namespace pdserve::gpu_bench {

// Decode steps of 1, 2, 4, 8 and 16 sequences, each adding one token after
// `prefix` tokens (a multiple of the block size) whose KV the blocks
// prefix_blocks[0 .. prefix / block_size) already hold, shared by all, and
// writing its own KV in block private_block0 + i: the median wall time of
// Forward (logits on the host included), through MatVec where the batch
// allows it and through cuBLAS. Needs 16 free blocks from private_block0 and
// a runner with 16 logit rows.
void BenchDecodeSweep(cuda::CudaRunner& runner, int32_t n_vocab, const int32_t* prefix_blocks,
                      int32_t prefix, int32_t block_size, int32_t private_block0);

// MatVec alone on llama-3-8b's shapes (Q4_0 qkv, wo, gate_up, down; the Q8_0
// output head), at 1 and 4 tokens: GB/s of weight bytes read, each launch on
// a copy of the matrix that is not in L2; then the whole step's weights
// (32 layers and the head) against copy_bw, the device copy bandwidth
// (bytes read + written).
void BenchMatVec(cudaStream_t stream, double copy_bw);

}  // namespace pdserve::gpu_bench
