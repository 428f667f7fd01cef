#include "kernels/cuda/matvec.h"

#include <algorithm>
#include <atomic>

#include "kernels/cuda/common.cuh"

namespace pdserve::kernels::cuda {
namespace {

// ---- Integer path: Q4_0, Q4_1 and Q8_0 weights on q8_1 activations -------
//
// A decode step reads every weight once, so this kernel is a stream of
// weight bytes through the SMs: what sets its speed is how many bytes are in
// flight and how much L1/shared-memory traffic each byte costs on its way to
// the dp4a units (the L1 moves ~7x the HBM bandwidth, not much more).
//
// Work split. A warp takes a task of kTaskRows = 4 consecutive output rows
// at a time: lanes 0-15 own rows 0-1 of the task, lanes 16-31 rows 2-3 (two
// "slots"). Rows are cut into chunks of 4096 weights (kChunkBlocks = 128
// quant blocks, 16 groups of 8 blocks), and lane g of a slot takes group g
// of each chunk. A group is 144 (Q4_0), 160 (Q4_1) or 272 (Q8_0) bytes: a
// whole number of 16-byte words.
//
// Per chunk the warp copies its 4 rows' bytes (contiguous in memory, and
// across the warp's tasks too) into its own shared-memory buffer with
// 16-byte cp.async, coalesced and without registers; each lane then reads
// its groups back with 16-byte loads (consecutive lanes' groups start 4
// banks apart: no conflicts) and decodes each block once for every token.
// Every token's activations are staged once per thread block in shared
// memory, padded for the same conflict-free reads; a block of them, once
// loaded, serves both rows of the lane. Occupancy hides the memory latency:
// a warp waits for its copy while the SM's other warps compute.
//
// The per-block float expression is the CPU's (kernels/cpu/matmul_scalar.cc)
// on the same integer sums; only the order of the float block sums differs.

constexpr int kMvWarps = 4;
constexpr int kMvThreads = kMvWarps * kWarp;
constexpr int kSlotLanes = 16;  // lanes per row slot = groups per chunk
constexpr int kLaneRows = 2;    // output rows per lane
constexpr int kTaskRows = kWarp / kSlotLanes * kLaneRows;
constexpr int kGroupBlocks = 8;
constexpr int kChunkBlocks = kSlotLanes * kGroupBlocks;  // 4096 weights
static_assert(kLaneRows * kMaxMatVecTokens <= kSlotLanes, "one output per lane of a slot");

// Shared-memory activations, per token and group of 8 blocks: the 256 int8
// quants padded to 272 bytes (16-byte reads of consecutive groups start 4
// banks apart) and the 8 (d, sum) float pairs padded to 72 bytes (8-byte
// reads of 16 consecutive groups hit 16 distinct bank pairs).
constexpr int kActQStride = kGroupBlocks * kQK + 16;
constexpr int kActDsStride = kGroupBlocks * 8 + 8;
constexpr int kActChunkBytes = kSlotLanes * (kActQStride + kActDsStride);  // per token
// Activations take at most this much shared memory: all of n_in when it
// fits (always up to 4096 inputs), else tiles of whole chunks that run one
// after another, the partial sums going through y.
constexpr int kActTileBudget = 48 << 10;

template <DType kType>
struct Q8Layout;
template <>
struct Q8Layout<DType::kQ4_0> {
  static constexpr int kBlockBytes = sizeof(BlockQ4_0), kQsOffset = 2, kWords = 4;
  static constexpr int kGroupStride = 144;  // 36 words: groups 4 banks apart
};
template <>
struct Q8Layout<DType::kQ4_1> {
  static constexpr int kBlockBytes = sizeof(BlockQ4_1), kQsOffset = 4, kWords = 4;
  static constexpr int kGroupStride = 176;  // 160 would put every 4th lane on one bank
};
template <>
struct Q8Layout<DType::kQ8_0> {
  static constexpr int kBlockBytes = sizeof(BlockQ8_0), kQsOffset = 2, kWords = 8;
  static constexpr int kGroupStride = 272;  // 68 words: groups 4 banks apart
};
template <DType kType>
constexpr int kGroupBytes = kGroupBlocks* Q8Layout<kType>::kBlockBytes;

__host__ __device__ constexpr int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Shared memory of one thread block: act_q (kTokens, act_chunks * 16 groups,
// kActQStride), act_ds (same, kActDsStride), then one weight buffer per warp
// (kTaskRows, kSlotLanes, kGroupStride).
__host__ __device__ constexpr int ActQBytes(int tokens, int act_chunks) {
  return tokens * act_chunks * kSlotLanes * kActQStride;
}
__host__ __device__ constexpr int ActDsBytes(int tokens, int act_chunks) {
  return (tokens * act_chunks * kSlotLanes * kActDsStride + 15) / 16 * 16;
}
template <DType kType>
__host__ __device__ constexpr int WarpBufferBytes() {
  return kTaskRows * kSlotLanes * Q8Layout<kType>::kGroupStride;
}

// 16 bytes from global to shared memory without a trip through registers
// (cp.async, sm_80 and later; .cg: through L2 only, the weights are read
// once); a plain copy in the emulation.
__device__ __forceinline__ void CopyAsync16(uint8_t* smem, const uint8_t* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
#else
  *reinterpret_cast<uint4*>(smem) = *reinterpret_cast<const uint4*>(gmem);
#endif
}
// Waits for the calling thread's CopyAsync16 copies.
__device__ __forceinline__ void CopyAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Copies kUnit-byte units [0, units) of each of the task's rows (src_rows[i]
// + unit offset) into buf, lanes striding over all rows' units together.
template <DType kType, int kUnit>
__device__ __forceinline__ void CopyRowUnits(uint8_t* buf, const uint8_t* src, int64_t row_bytes,
                                             int64_t r0, int64_t n_out, int units, int lane) {
  using L = Q8Layout<kType>;
  int i = 0, u = lane;
  while (i < kTaskRows && u >= units) u -= units, ++i;
  while (i < kTaskRows) {
    // Rows past n_out repeat the last row: read, never stored.
    const int64_t r = Min64(r0 + i, n_out - 1);
    const int off = u * kUnit;
    uint8_t* dst = buf + (i * kSlotLanes + off / kGroupBytes<kType>)*L::kGroupStride +
                   off % kGroupBytes<kType>;
    if constexpr (kUnit == 16) {
      CopyAsync16(dst, src + r * row_bytes + off);
    } else {
      *reinterpret_cast<uint16_t*>(dst) =
          *reinterpret_cast<const uint16_t*>(src + r * row_bytes + off);
    }
    u += kWarp;
    while (i < kTaskRows && u >= units) u -= units, ++i;
  }
}

// Starts the copy of chunk c of the task's rows into the warp's buffer
// (CopyAsyncWait, then __syncwarp, before reading it). 16-byte cp.async
// when rows and base are 16-byte aligned, else 2-byte copies. The unused
// tail of a partial last group is zeroed so that DotGroup's 16-byte reads
// never see a byte nobody wrote.
template <DType kType>
__device__ __forceinline__ void CopyChunk(uint8_t* buf, const uint8_t* w, int64_t row_bytes,
                                          int64_t n_out, int64_t nb, int64_t task, int64_t c,
                                          bool vec, int lane) {
  using L = Q8Layout<kType>;
  const int n_blk = static_cast<int>(Min64(kChunkBlocks, nb - c * kChunkBlocks));
  const int bytes = n_blk * L::kBlockBytes;  // per row; a multiple of 16 when vec
  const uint8_t* src = w + c * kChunkBlocks * L::kBlockBytes;
  const int64_t r0 = task * kTaskRows;
  if (vec) {
    CopyRowUnits<kType, 16>(buf, src, row_bytes, r0, n_out, bytes / 16, lane);
  } else {
    CopyRowUnits<kType, 2>(buf, src, row_bytes, r0, n_out, bytes / 2, lane);
  }
  if (const int tail = n_blk % kGroupBlocks; tail != 0) {
    const int g = n_blk / kGroupBlocks, from = tail * L::kBlockBytes;
    const int n_zero = (kGroupBytes<kType> - from) / 2;  // 2-byte units per row
    for (int v = lane; v < kTaskRows * n_zero; v += kWarp) {
      uint8_t* p =
          buf + ((v / n_zero) * kSlotLanes + g) * L::kGroupStride + from + 2 * (v % n_zero);
      *reinterpret_cast<uint16_t*>(p) = 0;
    }
  }
}

// Stages chunks [c0, c1) of every token's q8_1 row into act_q and act_ds
// (see ActQBytes); the whole block takes part.
template <int kTokens>
__device__ __forceinline__ void StageActivations(uint8_t* act_q, uint8_t* act_ds, int act_groups,
                                                 const uint8_t* act, int64_t act_row_bytes,
                                                 int64_t n_in, int64_t nb, int64_t c0, int64_t c1,
                                                 bool vec) {
  const int64_t b0 = c0 * kChunkBlocks;
  const int n_blk = static_cast<int>(Min64(c1 * kChunkBlocks, nb) - b0);
  for (int t = 0; t < kTokens; ++t) {
    const uint8_t* row = act + t * act_row_bytes;
    uint8_t* q = act_q + t * act_groups * kActQStride;
    if (vec) {  // 16-byte halves of 32-byte blocks
      for (int u = threadIdx.x; u < 2 * n_blk; u += kMvThreads) {
        const int b = u / 2, half = u % 2;
        *reinterpret_cast<uint4*>(q + (b / kGroupBlocks) * kActQStride + (b % kGroupBlocks) * kQK +
                                  half * 16) =
            *reinterpret_cast<const uint4*>(row + (b0 + b) * kQK + half * 16);
      }
    } else {  // 4-byte words
      for (int u = threadIdx.x; u < 8 * n_blk; u += kMvThreads) {
        const int b = u / 8, word = u % 8;
        *reinterpret_cast<uint32_t*>(q + (b / kGroupBlocks) * kActQStride +
                                     (b % kGroupBlocks) * kQK + word * 4) =
            *reinterpret_cast<const uint32_t*>(row + (b0 + b) * kQK + word * 4);
      }
    }
    const float* d = reinterpret_cast<const float*>(row + n_in);  // then nb block sums
    uint8_t* ds = act_ds + t * act_groups * kActDsStride;
    for (int b = threadIdx.x; b < n_blk; b += kMvThreads) {
      *reinterpret_cast<float2*>(ds + (b / kGroupBlocks) * kActDsStride + (b % kGroupBlocks) * 8) =
          make_float2(d[b0 + b], d[nb + b0 + b]);
    }
  }
}

// Fields of block j of a group whose bytes are the 32-bit words g (the
// group's 16-byte words, as loaded): the scale d, Q4_1's min m, and the
// quants as kWords 32-bit words. Every field is 2-byte aligned; once the
// caller's loop over j is unrolled every index and shift here is a constant.
template <DType kType>
__device__ __forceinline__ void DecodeBlock(const uint32_t* g, int j, float* d, float* m,
                                            uint32_t* q) {
  using L = Q8Layout<kType>;
  const int start = j * L::kBlockBytes;
  auto half = [&](int at) {
    const auto bits = static_cast<unsigned short>(g[at / 4] >> (8 * (at % 4)));
    return __half2float(__ushort_as_half(bits));
  };
  *d = half(start);
  if constexpr (kType == DType::kQ4_1) *m = half(start + 2);
  PDS_UNROLL
  for (int i = 0; i < L::kWords; ++i) {
    const int at = start + L::kQsOffset + 4 * i;
    q[i] = at % 4 == 0 ? g[at / 4] : (g[at / 4] >> 16) | (g[at / 4 + 1] << 16);
  }
}

// Adds blocks [0, n_valid) (all 8 when kFull) of one group of the lane's
// kLaneRows rows (w: the first row's group, rows w_row_stride bytes apart)
// times every token's activations (aq, ads: the group's, tokens
// aq_token_stride and ads_token_stride bytes apart) to sum. Each 16-byte
// word of the weights is read once, when the first block that needs it
// comes; blocks share the words at their boundaries.
template <DType kType, int kTokens, bool kFull>
__device__ __forceinline__ void DotGroup(float (&sum)[kLaneRows][kTokens], const uint8_t* w,
                                         int w_row_stride, const uint8_t* aq, int aq_token_stride,
                                         const uint8_t* ads, int ads_token_stride, int n_valid) {
  using L = Q8Layout<kType>;
  uint32_t g[kLaneRows][kGroupBytes<kType> / 4];  // the group's words, as loaded
  PDS_UNROLL
  for (int j = 0; j < kGroupBlocks; ++j) {
    if (!kFull && j >= n_valid) break;
    // The 16-byte words block j needs and the previous block did not load.
    const int first = j == 0 ? 0 : ((j - 1) * L::kBlockBytes + L::kBlockBytes - 1) / 16 + 1;
    const int last = (j * L::kBlockBytes + L::kBlockBytes - 1) / 16;
    float dw[kLaneRows], mw[kLaneRows];
    uint32_t wq[kLaneRows][8];  // quants matching activation words 0..7
    PDS_UNROLL
    for (int k = 0; k < kLaneRows; ++k) {
      PDS_UNROLL
      for (int i = first; i <= last; ++i) {
        const uint4 x = reinterpret_cast<const uint4*>(w + k * w_row_stride)[i];
        g[k][4 * i] = x.x, g[k][4 * i + 1] = x.y, g[k][4 * i + 2] = x.z, g[k][4 * i + 3] = x.w;
      }
      uint32_t raw[L::kWords];
      DecodeBlock<kType>(g[k], j, &dw[k], &mw[k], raw);
      PDS_UNROLL
      for (int i = 0; i < 4; ++i) {
        if constexpr (kType == DType::kQ8_0) {
          wq[k][i] = raw[i], wq[k][4 + i] = raw[4 + i];
        } else {
          // Low nibbles are elements 4i..4i+3, high nibbles 16+4i..16+4i+3.
          wq[k][i] = raw[i] & 0x0F0F0F0Fu;
          wq[k][4 + i] = (raw[i] >> 4) & 0x0F0F0F0Fu;
        }
      }
    }
    PDS_UNROLL
    for (int t = 0; t < kTokens; ++t) {
      const int4* a = reinterpret_cast<const int4*>(aq + t * aq_token_stride + j * kQK);
      const int4 a0 = a[0], a1 = a[1];
      const float2 ds = *reinterpret_cast<const float2*>(ads + t * ads_token_stride + j * 8);
      const int av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      PDS_UNROLL
      for (int k = 0; k < kLaneRows; ++k) {
        int isum = 0;
        PDS_UNROLL
        for (int i = 0; i < 8; ++i) isum = __dp4a(static_cast<int>(wq[k][i]), av[i], isum);
        // The CPU's per-block expression (kernels/cpu/matmul_scalar.cc).
        float block = __fmul_rn(__fmul_rn(dw[k], ds.x), static_cast<float>(isum));
        if constexpr (kType == DType::kQ4_0) {
          block = __fsub_rn(block, __fmul_rn(__fmul_rn(8.0f, dw[k]), ds.y));
        } else if constexpr (kType == DType::kQ4_1) {
          block = __fadd_rn(block, __fmul_rn(mw[k], ds.y));
        }
        sum[k][t] = __fadd_rn(sum[k][t], block);
      }
    }
  }
}

template <DType kType, int kTokens>
__global__ void __launch_bounds__(kMvThreads, 4)
    MatVecQ8Kernel(float* y, int64_t ldy, const uint8_t* w, int64_t row_bytes, int64_t n_in,
                   int64_t n_out, const uint8_t* act, int64_t act_row_bytes, int act_chunks,
                   bool vec_w, bool vec_act, bool accumulate) {
  using L = Q8Layout<kType>;
  PDS_DYNAMIC_SMEM(uint8_t, smem);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int slot = lane / kSlotLanes, gl = lane % kSlotLanes;
  const int64_t nb = n_in / kQK;
  const int64_t n_chunks = (nb + kChunkBlocks - 1) / kChunkBlocks;
  const int act_groups = act_chunks * kSlotLanes;
  uint8_t* act_q = smem;
  uint8_t* act_ds = act_q + ActQBytes(kTokens, act_chunks);
  uint8_t* buf = act_ds + ActDsBytes(kTokens, act_chunks) + warp * WarpBufferBytes<kType>();
  // This lane's first row and group in the buffer.
  const uint8_t* lane_w = buf + (slot * kLaneRows * kSlotLanes + gl) * L::kGroupStride;
  const int64_t n_tasks = (n_out + kTaskRows - 1) / kTaskRows;
  const int64_t task_step = static_cast<int64_t>(gridDim.x) * kMvWarps;

  for (int64_t c0 = 0; c0 < n_chunks; c0 += act_chunks) {
    const int64_t c1 = Min64(c0 + act_chunks, n_chunks);
    int64_t task = static_cast<int64_t>(blockIdx.x) * kMvWarps + warp;
    // The first weights are on their way while the activations are staged.
    if (task < n_tasks) CopyChunk<kType>(buf, w, row_bytes, n_out, nb, task, c0, vec_w, lane);
    __syncthreads();  // every warp is done with the previous activation tile
    StageActivations<kTokens>(act_q, act_ds, act_groups, act, act_row_bytes, n_in, nb, c0, c1,
                              vec_act);
    __syncthreads();
    for (; task < n_tasks; task += task_step) {
      float sum[kLaneRows][kTokens];
      PDS_UNROLL
      for (int k = 0; k < kLaneRows; ++k) {
        PDS_UNROLL
        for (int t = 0; t < kTokens; ++t) sum[k][t] = 0.0f;
      }
      for (int64_t c = c0; c < c1; ++c) {
        CopyAsyncWait();
        __syncwarp();
        const int n_blk = static_cast<int>(Min64(kChunkBlocks, nb - c * kChunkBlocks));
        const int group = static_cast<int>(c - c0) * kSlotLanes + gl;
        const int n_valid = n_blk - gl * kGroupBlocks;  // blocks of this lane's group
        const uint8_t* aq = act_q + group * kActQStride;
        const uint8_t* ads = act_ds + group * kActDsStride;
        if (n_valid >= kGroupBlocks) {
          DotGroup<kType, kTokens, true>(sum, lane_w, kSlotLanes * L::kGroupStride, aq,
                                         act_groups * kActQStride, ads, act_groups * kActDsStride,
                                         n_valid);
        } else if (n_valid > 0) {
          DotGroup<kType, kTokens, false>(sum, lane_w, kSlotLanes * L::kGroupStride, aq,
                                          act_groups * kActQStride, ads, act_groups * kActDsStride,
                                          n_valid);
        }
        __syncwarp();  // the buffer is free: start the next copy before the sums
        if (c + 1 < c1) {
          CopyChunk<kType>(buf, w, row_bytes, n_out, nb, task, c + 1, vec_w, lane);
        } else if (task + task_step < n_tasks) {
          CopyChunk<kType>(buf, w, row_bytes, n_out, nb, task + task_step, c0, vec_w, lane);
        }
      }
      // Each row's sum over the 16 lanes of its slot; lane k * kTokens + t of
      // the slot writes row k, token t.
      PDS_UNROLL
      for (int k = 0; k < kLaneRows; ++k) {
        const int64_t r = task * kTaskRows + slot * kLaneRows + k;
        PDS_UNROLL
        for (int t = 0; t < kTokens; ++t) {
          float s = sum[k][t];
          PDS_UNROLL
          for (int m = kSlotLanes / 2; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
          if (gl == k * kTokens + t && r < n_out) {
            float* out = y + t * ldy + r;
            *out = c0 == 0 && !accumulate ? s : *out + s;
          }
        }
      }
    }
  }
}

// Device facts a launch needs; cudaDeviceGetAttribute is a table lookup.
struct DeviceShape {
  int device = 0, n_sm = 0, smem_optin = 0;
};
cudaError_t GetDeviceShape(DeviceShape* s) {
  if (cudaError_t e = cudaGetDevice(&s->device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&s->n_sm, cudaDevAttrMultiProcessorCount, s->device);
      e != cudaSuccess) {
    return e;
  }
  return cudaDeviceGetAttribute(&s->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, s->device);
}

template <DType kType, int kTokens>
cudaError_t LaunchQ8(float* y, int64_t ldy, const uint8_t* w, int64_t n_out, int64_t n_in,
                     const uint8_t* act, bool accumulate, cudaStream_t stream) {
  const int64_t nb = n_in / kQK;
  const int64_t n_chunks = (nb + kChunkBlocks - 1) / kChunkBlocks;
  const int act_chunks = static_cast<int>(
      std::clamp<int64_t>(kActTileBudget / (kTokens * kActChunkBytes), 1, n_chunks));
  const int smem = ActQBytes(kTokens, act_chunks) + ActDsBytes(kTokens, act_chunks) +
                   kMvWarps * WarpBufferBytes<kType>();
  const int64_t row_bytes = RowBytes(kType, n_in);
  const int64_t act_row_bytes = n_in + nb * 8;
  DeviceShape dev;
  if (cudaError_t e = GetDeviceShape(&dev); e != cudaSuccess) return e;
  if (smem > dev.smem_optin) return cudaErrorInvalidValue;
  if (smem > (48 << 10)) {
    // Once per device: allow this kernel the device's whole opt-in limit.
    static std::atomic<uint64_t> allowed{0};
    const uint64_t bit = uint64_t{1} << (dev.device & 63);
    if ((allowed.load(std::memory_order_relaxed) & bit) == 0) {
      cudaError_t e =
          cudaFuncSetAttribute(MatVecQ8Kernel<kType, kTokens>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin);
      if (e != cudaSuccess) return e;
      allowed.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  // Grid: one task per warp when the blocks' activation staging is cheap
  // beside their weights (the hardware then balances the blocks over the
  // SMs); with many tokens on short rows, fewer blocks that loop over
  // several tasks each, but never fewer than fit on the GPU at once
  // (shared memory per SM is the opt-in limit + 1 KiB; at most 4 blocks by
  // __launch_bounds__).
  const int per_sm = std::clamp((dev.smem_optin + 1024) / (smem + 1024), 1, 4);
  const int64_t task_blocks = ((n_out + kTaskRows - 1) / kTaskRows + kMvWarps - 1) / kMvWarps;
  const int64_t act_bytes = kTokens * act_row_bytes;
  const int64_t block_weight_bytes = int64_t{kMvWarps} * kTaskRows * row_bytes;
  const int64_t tasks_per_block = std::max<int64_t>(1, 4 * act_bytes / block_weight_bytes);
  const int64_t grid = std::min(
      task_blocks, std::max<int64_t>(int64_t{dev.n_sm} * per_sm,
                                     (task_blocks + tasks_per_block - 1) / tasks_per_block));
  const bool vec_w = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const bool vec_act = act_row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(act) % 16 == 0;
  PDS_LAUNCH(dim3(static_cast<unsigned>(grid)), dim3(kMvThreads), smem, stream,
             MatVecQ8Kernel<kType, kTokens>)
  (y, ldy, w, row_bytes, n_in, n_out, act, act_row_bytes, act_chunks, vec_w, vec_act, accumulate);
  return cudaGetLastError();
}

// ---- Float path: every other weight type on float activations -------------

constexpr int kF32RowsPerBlock = 4;  // one warp per output row
constexpr int kF32Threads = kF32RowsPerBlock * kWarp;

template <int kTokens>
__global__ void __launch_bounds__(kF32Threads)
    MatVecF32Kernel(float* y, int64_t ldy, const uint8_t* w, DType type, int64_t row_bytes,
                    int64_t n_in, const float* x, int64_t n_out, bool accumulate) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = blockIdx.x * static_cast<int64_t>(kF32RowsPerBlock) + threadIdx.x / kWarp;
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
  const auto* a = static_cast<const uint8_t*>(act);
  switch (type) {
    case DType::kQ4_0:
      return LaunchQ8<DType::kQ4_0, kTokens>(y, ldy, w, n_out, n_in, a, accumulate, stream);
    case DType::kQ4_1:
      return LaunchQ8<DType::kQ4_1, kTokens>(y, ldy, w, n_out, n_in, a, accumulate, stream);
    case DType::kQ8_0:
      return LaunchQ8<DType::kQ8_0, kTokens>(y, ldy, w, n_out, n_in, a, accumulate, stream);
    default: {
      const dim3 grid(CeilDiv(n_out, kF32RowsPerBlock)), block(kF32Threads);
      PDS_LAUNCH(grid, block, 0, stream, MatVecF32Kernel<kTokens>)
      (y, ldy, w, type, RowBytes(type, n_in), n_in, static_cast<const float*>(act), n_out,
       accumulate);
      return cudaGetLastError();
    }
  }
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
