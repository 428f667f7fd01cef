#include "kernels/cuda/attention.h"

#include "kernels/cuda/common.cuh"

namespace pdserve::kernels::cuda {
namespace {

constexpr int kAttnThreads = 128;
constexpr int kKRegs = kMaxAttnHeadDim / kWarp;

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ void FromFloat(float* p, float v) { *p = v; }
__device__ __forceinline__ void FromFloat(__half* p, float v) { *p = __float2half_rn(v); }

// Element offset of row (kv_idx, head, slot) in a layer's block array.
__device__ __forceinline__ int64_t KvRowOffset(const KvLayerView& kv, int64_t block, int kv_idx,
                                               int head, int32_t offset) {
  const int64_t block_elems = 2LL * kv.n_kv_heads * kv.block_size * kv.head_dim;
  return block * block_elems +
         ((static_cast<int64_t>(kv_idx) * kv.n_kv_heads + head) * kv.block_size + offset) *
             kv.head_dim;
}

template <typename KvT>
__global__ void __launch_bounds__(128)
    RopeStoreKvKernel(float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv,
                      KvLayerView kv, const int32_t* pos, const int64_t* slots,
                      const float* cos_sin, int n_heads, int n_rot) {
  const int64_t r = blockIdx.x;
  const int D = kv.head_dim, half = D / 2, rot_half = n_rot / 2;
  const float* cs = cos_sin != nullptr ? cos_sin + static_cast<int64_t>(pos[r]) * n_rot : nullptr;
  const int64_t slot = slots[r];
  const int64_t block = slot / kv.block_size;
  const int32_t offset = static_cast<int32_t>(slot % kv.block_size);
  KvT* base = static_cast<KvT*>(kv.base);
  // Query pairs, rotated in place.
  if (q != nullptr) {
    for (int j = threadIdx.x; j < n_heads * rot_half; j += blockDim.x) {
      const int h = j / rot_half, i = j % rot_half;
      float* p = q + r * ldq + h * D + 2 * i;
      const float c = cs[2 * i], s = cs[2 * i + 1], a = p[0], b = p[1];
      p[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
      p[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    }
  }
  // Key pairs, rotated (first n_rot dims) on their way into the cache; values.
  for (int j = threadIdx.x; j < kv.n_kv_heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const float* kp = k + r * ldkv + h * D + 2 * i;
    float a = kp[0], b = kp[1];
    if (cs != nullptr && i < rot_half) {
      const float c = cs[2 * i], s = cs[2 * i + 1];
      const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
      b = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
      a = ra;
    }
    KvT* kd = base + KvRowOffset(kv, block, 0, h, offset) + 2 * i;
    FromFloat(kd, a);
    FromFloat(kd + 1, b);
    const float* vp = v + r * ldkv + h * D + 2 * i;
    KvT* vd = base + KvRowOffset(kv, block, 1, h, offset) + 2 * i;
    FromFloat(vd, vp[0]);
    FromFloat(vd + 1, vp[1]);
  }
}

// One block per (work item, KV head): scores of one chunk of one row's
// context for the group's query heads, softmax within the chunk, weighted V.
template <typename KvT>
__global__ void __launch_bounds__(kAttnThreads)
    AttnChunkKernel(float* out, int64_t ldo, const float* q, int64_t ldq, KvLayerView kv,
                    const AttnSeq* seqs, const AttnWorkItem* items, int32_t chunk, float* partials,
                    int n_heads, float scale) {
  PDS_DYNAMIC_SMEM(float, smem);
  const int G = n_heads / kv.n_kv_heads, D = kv.head_dim;
  float* sq = smem;            // (G, D) queries
  float* sp = sq + G * D;      // (G, chunk) scores, then probabilities
  float* sm = sp + G * chunk;  // (G) chunk max
  float* sl = sm + G;          // (G) chunk sum
  const AttnWorkItem item = items[blockIdx.x];
  const int kvh = blockIdx.y;
  const AttnSeq seq = seqs[item.seq];
  const int64_t row = seq.row0 + item.i;
  const int32_t ctx = seq.n_past + item.i + 1;
  const int32_t p0 = item.chunk * chunk;
  const int32_t p1 = ctx < p0 + chunk ? ctx : p0 + chunk;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = blockDim.x / kWarp;
  const KvT* base = static_cast<const KvT*>(kv.base);

  // The group's query heads are contiguous in the row.
  for (int j = threadIdx.x; j < G * D; j += blockDim.x) {
    sq[j] = q[row * ldq + static_cast<int64_t>(kvh) * G * D + j];
  }
  __syncthreads();

  // Scores: one warp per position, the key row held in registers.
  for (int32_t p = p0 + warp; p < p1; p += n_warps) {
    const KvT* kr =
        base + KvRowOffset(kv, seq.block_table[p / kv.block_size], 0, kvh, p % kv.block_size);
    float kreg[kKRegs];
#pragma unroll
    for (int i = 0; i < kKRegs; ++i) {
      const int d = i * kWarp + lane;
      kreg[i] = d < D ? ToFloat(kr[d]) : 0.0f;
    }
    for (int g = 0; g < G; ++g) {
      float dot = 0;
#pragma unroll
      for (int i = 0; i < kKRegs; ++i) {
        const int d = i * kWarp + lane;
        if (d < D) dot += sq[g * D + d] * kreg[i];
      }
      dot = WarpSum(dot);
      if (lane == 0) sp[g * chunk + (p - p0)] = dot * scale;
    }
  }
  __syncthreads();

  // Softmax within the chunk, one warp per head.
  const int32_t n = p1 - p0;
  for (int g = warp; g < G; g += n_warps) {
    float m = -INFINITY;
    for (int32_t j = lane; j < n; j += kWarp) m = fmaxf(m, sp[g * chunk + j]);
    m = WarpMax(m);
    float s = 0;
    for (int32_t j = lane; j < n; j += kWarp) {
      const float e = expf(sp[g * chunk + j] - m);
      sp[g * chunk + j] = e;
      s += e;
    }
    s = WarpSum(s);
    if (lane == 0) {
      sm[g] = m;
      sl[g] = s;
    }
  }
  __syncthreads();

  // Probability-weighted values: one thread per (head, dim).
  for (int j = threadIdx.x; j < G * D; j += blockDim.x) {
    const int g = j / D, d = j % D;
    float acc = 0;
    for (int32_t p = p0; p < p1; ++p) {
      const KvT* vr =
          base + KvRowOffset(kv, seq.block_table[p / kv.block_size], 1, kvh, p % kv.block_size);
      acc += sp[g * chunk + (p - p0)] * ToFloat(vr[d]);
    }
    const int h = kvh * G + g;
    if (item.partial < 0) {
      out[row * ldo + static_cast<int64_t>(h) * D + d] = acc / sl[g];
    } else {
      float* part = partials + (static_cast<int64_t>(item.partial) * n_heads + h) * (D + 2);
      part[d] = acc;
      if (d == 0) {
        part[D] = sm[g];
        part[D + 1] = sl[g];
      }
    }
  }
}

// One block per (split row, query head): merges the row's chunk results.
__global__ void __launch_bounds__(kAttnThreads)
    AttnCombineKernel(float* out, int64_t ldo, const AttnSplitRow* rows, const float* partials,
                      int n_heads, int head_dim) {
  const AttnSplitRow sr = rows[blockIdx.x];
  const int h = blockIdx.y, D = head_dim;
  auto part = [&](int c) {
    return partials + (static_cast<int64_t>(sr.partial0 + c) * n_heads + h) * (D + 2);
  };
  float m = -INFINITY;
  for (int c = 0; c < sr.n_chunks; ++c) m = fmaxf(m, part(c)[D]);
  float l = 0;
  for (int c = 0; c < sr.n_chunks; ++c) l += part(c)[D + 1] * expf(part(c)[D] - m);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0;
    for (int c = 0; c < sr.n_chunks; ++c) o += part(c)[d] * expf(part(c)[D] - m);
    out[sr.row * ldo + static_cast<int64_t>(h) * D + d] = o / l;
  }
}

}  // namespace

cudaError_t StoreKv(const KvLayerView& kv, const int64_t* slots, const float* k, const float* v,
                    int64_t ld, int64_t n_rows, cudaStream_t stream) {
  return RopeStoreKv(nullptr, 0, k, v, ld, kv, nullptr, slots, nullptr, n_rows, 0, 0, stream);
}

cudaError_t RopeStoreKv(float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv,
                        const KvLayerView& kv, const int32_t* pos, const int64_t* slots,
                        const float* cos_sin, int64_t n_rows, int n_heads, int n_rot,
                        cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  if (kv.head_dim % 2 != 0 || n_rot > kv.head_dim || n_rot % 2 != 0) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(n_rows)), block(128);
  if (kv.kv_type == DType::kF16) {
    PDS_LAUNCH(grid, block, 0, stream, RopeStoreKvKernel<__half>)
    (q, ldq, k, v, ldkv, kv, pos, slots, cos_sin, n_heads, n_rot);
  } else if (kv.kv_type == DType::kF32) {
    PDS_LAUNCH(grid, block, 0, stream, RopeStoreKvKernel<float>)
    (q, ldq, k, v, ldkv, kv, pos, slots, cos_sin, n_heads, n_rot);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t PagedAttention(float* out, int64_t ldo, const float* q, int64_t ldq,
                           const KvLayerView& kv, const AttnSeq* seqs, const AttnWorkItem* items,
                           int32_t n_items, const AttnSplitRow* split_rows, int32_t n_split_rows,
                           int32_t chunk, float* partials, int n_heads, float scale,
                           cudaStream_t stream) {
  if (n_items == 0) return cudaSuccess;
  if (kv.head_dim > kMaxAttnHeadDim || kv.n_kv_heads <= 0 || n_heads % kv.n_kv_heads != 0 ||
      chunk <= 0) {
    return cudaErrorInvalidValue;
  }
  const int G = n_heads / kv.n_kv_heads;
  const size_t smem = sizeof(float) * (static_cast<size_t>(G) * kv.head_dim +
                                       static_cast<size_t>(G) * chunk + 2 * G);
  const dim3 grid(static_cast<unsigned>(n_items), static_cast<unsigned>(kv.n_kv_heads));
  if (kv.kv_type == DType::kF16) {
    if (smem > (48 << 10)) {
      cudaError_t e =
          cudaFuncSetAttribute(AttnChunkKernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
      if (e != cudaSuccess) return e;
    }
    PDS_LAUNCH(grid, dim3(kAttnThreads), smem, stream, AttnChunkKernel<__half>)
    (out, ldo, q, ldq, kv, seqs, items, chunk, partials, n_heads, scale);
  } else if (kv.kv_type == DType::kF32) {
    if (smem > (48 << 10)) {
      cudaError_t e =
          cudaFuncSetAttribute(AttnChunkKernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
      if (e != cudaSuccess) return e;
    }
    PDS_LAUNCH(grid, dim3(kAttnThreads), smem, stream, AttnChunkKernel<float>)
    (out, ldo, q, ldq, kv, seqs, items, chunk, partials, n_heads, scale);
  } else {
    return cudaErrorInvalidValue;
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (n_split_rows == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_split_rows), static_cast<unsigned>(n_heads)),
             dim3(kAttnThreads), 0, stream, AttnCombineKernel)
  (out, ldo, split_rows, partials, n_heads, kv.head_dim);
  return cudaGetLastError();
}

}  // namespace pdserve::kernels::cuda
