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

// ---- Tiled prefill attention -------------------------------------------------
//
// One block of kTileThreads per (tile, KV head). The tile's query vectors
// j = (row j / G, head j % G), up to kAttnTileVecs of them, sit in shared
// memory; keys come through in tiles of kTileKeys rows, K then V into the
// same buffer, converted to float. Thread (tj, tc) = (threadIdx.x / 8,
// threadIdx.x % 8) owns query vectors tj + 16a (a < 4) and, for the scores,
// keys tc + 8b (b < 8) of the key tile; for the output, dims 4 tc + 32 kb
// .. + 3 (kb < kDB). Reads of shared memory are float4: the 8 threads of a
// quarter warp read one query vector (broadcast) and 8 consecutive key rows
// (row stride D + 4 floats: distinct banks), or 8 consecutive float4 of one
// V row. FP32 SIMT (no tensor cores): tests hold attention to 1e-10 NMSE
// against a double reference, which f16 or TF32 operands would miss.
constexpr int kTileThreads = 128;
constexpr int kTileKeys = 64;
constexpr int kTileVecsPerThread = kAttnTileVecs / (kTileThreads / 8);  // 4
constexpr int kKeysPerThread = kTileKeys / 8;                           // 8
constexpr int kProbStride = kTileKeys + 4;
static_assert(kTileVecsPerThread == 4 && kKeysPerThread == 8);

// Shared memory floats of the tile kernel for head dim D.
constexpr int64_t TileSmemFloats(int D) {
  return static_cast<int64_t>(kAttnTileVecs + kTileKeys) * (D + 4) +
         static_cast<int64_t>(kAttnTileVecs) * kProbStride;
}

// Four KV elements as loaded (one 16- or 8-byte load), and as floats.
template <typename KvT>
struct Raw4;
template <>
struct Raw4<float> {
  using Type = float4;
};
template <>
struct Raw4<__half> {
  using Type = uint2;
};
__device__ __forceinline__ float4 ToFloat4(float4 v) { return v; }
__device__ __forceinline__ float4 ToFloat4(uint2 u) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
  return make_float4(__half2float(h[0].x), __half2float(h[0].y), __half2float(h[1].x),
                     __half2float(h[1].y));
}

// Loaders of 64-row float tiles (row stride D + 4) into shared memory: a
// thread takes float4 column `col` of rows row, row + kRowStep, ... All
// loads of a tile are issued, without branches (indices clamped into range),
// before the first store, so a tile costs about one trip to memory rather
// than one per row; the store pass writes zeros where the clamp applied.
template <int kDB>
struct TileLoad {
  static constexpr int kCols = 8 * kDB;  // float4 columns of a row, D <= 4 · kCols
  static constexpr int kRowStep = kTileThreads / kCols;
  static constexpr int kPasses = kTileKeys / kRowStep;
  static_assert(kTileKeys == kAttnTileVecs && kTileKeys % kRowStep == 0);
};

// Rows k0 .. k0 + kTileKeys - 1 (k0 < k1) of the KV head's K (kv_idx 0) or
// V (1) into dst as floats; rows at or past k1 are zeros (their
// probabilities are 0, and 0 · garbage could be NaN).
template <int kDB, typename KvT>
__device__ __forceinline__ void LoadKeyTile(float* dst, const KvLayerView& kv, const KvT* base,
                                            const int32_t* block_table, int kv_idx, int kvh,
                                            int32_t k0, int32_t k1) {
  using L = TileLoad<kDB>;
  const int D = kv.head_dim, col = 4 * (threadIdx.x % L::kCols), row = threadIdx.x / L::kCols;
  const int d = MinInt(col, D - 4);
  typename Raw4<KvT>::Type raw[L::kPasses];
#pragma unroll
  for (int i = 0; i < L::kPasses; ++i) {
    const int32_t p = MinInt(k0 + row + i * L::kRowStep, k1 - 1);
    const int64_t block = __ldg(block_table + p / kv.block_size);
    raw[i] = *reinterpret_cast<const typename Raw4<KvT>::Type*>(
        base + KvRowOffset(kv, block, kv_idx, kvh, p % kv.block_size) + d);
  }
  if (col >= D) return;
#pragma unroll
  for (int i = 0; i < L::kPasses; ++i) {
    const bool live = k0 + row + i * L::kRowStep < k1;
    *reinterpret_cast<float4*>(dst + (row + i * L::kRowStep) * (D + 4) + col) =
        live ? ToFloat4(raw[i]) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
}

// The tile's query vectors j = (row j / G, head j % G of the KV head's
// group), 0 < n_vec <= kAttnTileVecs of them, into dst; the rest are zeros.
template <int kDB>
__device__ __forceinline__ void LoadQueryTile(float* dst, const float* q, int64_t ldq, int64_t row0,
                                              int kvh, int G, int D, int n_vec) {
  using L = TileLoad<kDB>;
  const int col = 4 * (threadIdx.x % L::kCols), r = threadIdx.x / L::kCols;
  const int d = MinInt(col, D - 4);
  float4 v[L::kPasses];
#pragma unroll
  for (int i = 0; i < L::kPasses; ++i) {
    const int j = MinInt(r + i * L::kRowStep, n_vec - 1);
    const float* src = q + (row0 + j / G) * ldq + static_cast<int64_t>(kvh * G + j % G) * D + d;
    v[i] = make_float4(src[0], src[1], src[2], src[3]);  // ldq need not be a multiple of 4
  }
  if (col >= D) return;
#pragma unroll
  for (int i = 0; i < L::kPasses; ++i) {
    const bool live = r + i * L::kRowStep < n_vec;
    *reinterpret_cast<float4*>(dst + (r + i * L::kRowStep) * (D + 4) + col) =
        live ? v[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
}

template <typename KvT, int kDB>
__global__ void __launch_bounds__(kTileThreads, 2)
    AttnTileKernel(float* out, int64_t ldo, const float* q, int64_t ldq, KvLayerView kv,
                   const AttnSeq* seqs, const AttnTile* tiles, float* partials, int n_heads,
                   float scale) {
  PDS_DYNAMIC_SMEM(float, smem);
  const int G = n_heads / kv.n_kv_heads, D = kv.head_dim, Dp = D + 4;
  float* sq = smem;                      // (kAttnTileVecs, Dp) query vectors
  float* skv = sq + kAttnTileVecs * Dp;  // (kTileKeys, Dp) K, then V, of a key tile
  float* sp = skv + kTileKeys * Dp;      // (kAttnTileVecs, kProbStride) probabilities
  const int kvh = blockIdx.x % kv.n_kv_heads;
  const AttnTile tile = tiles[blockIdx.x / kv.n_kv_heads];
  const AttnSeq seq = seqs[tile.seq];
  const int n_vec = tile.n_rows * G;
  const int32_t pos0 = seq.n_past + tile.i0;  // position of the tile's first row
  const int tc = threadIdx.x % 8, tj = threadIdx.x / 8;
  const KvT* base = static_cast<const KvT*>(kv.base);

  LoadQueryTile<kDB>(sq, q, ldq, seq.row0 + tile.i0, kvh, G, D, n_vec);

  // Per owned query vector: its position (-1: none, every key masked), the
  // running max and this thread's share of the running sum.
  int32_t qpos[kTileVecsPerThread];
  float m[kTileVecsPerThread], l[kTileVecsPerThread];
  float o[kTileVecsPerThread][kDB][4];
#pragma unroll
  for (int a = 0; a < kTileVecsPerThread; ++a) {
    const int j = tj + 16 * a;
    qpos[a] = j < n_vec ? pos0 + j / G : -1;
    m[a] = -INFINITY;
    l[a] = 0.0f;
#pragma unroll
    for (int kb = 0; kb < kDB; ++kb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[a][kb][e] = 0.0f;
    }
  }

  for (int32_t k0 = tile.key0; k0 < tile.key1; k0 += kTileKeys) {
    LoadKeyTile<kDB>(skv, kv, base, seq.block_table, 0, kvh, k0, tile.key1);
    __syncthreads();

    // Scores of the owned (query vector, key) pairs.
    float s[kTileVecsPerThread][kKeysPerThread];
#pragma unroll
    for (int a = 0; a < kTileVecsPerThread; ++a) {
#pragma unroll
      for (int b = 0; b < kKeysPerThread; ++b) s[a][b] = 0.0f;
    }
#pragma unroll 2
    for (int d = 0; d < D; d += 4) {
      float4 qv[kTileVecsPerThread], kr[kKeysPerThread];
#pragma unroll
      for (int a = 0; a < kTileVecsPerThread; ++a) {
        qv[a] = *reinterpret_cast<const float4*>(sq + (tj + 16 * a) * Dp + d);
      }
#pragma unroll
      for (int b = 0; b < kKeysPerThread; ++b) {
        kr[b] = *reinterpret_cast<const float4*>(skv + (tc + 8 * b) * Dp + d);
      }
#pragma unroll
      for (int a = 0; a < kTileVecsPerThread; ++a) {
#pragma unroll
        for (int b = 0; b < kKeysPerThread; ++b) {
          s[a][b] = fmaf(qv[a].x, kr[b].x, s[a][b]);
          s[a][b] = fmaf(qv[a].y, kr[b].y, s[a][b]);
          s[a][b] = fmaf(qv[a].z, kr[b].z, s[a][b]);
          s[a][b] = fmaf(qv[a].w, kr[b].w, s[a][b]);
        }
      }
    }

    // Causal mask and online softmax; the 8 threads of a query vector are
    // lanes that differ in their low three bits.
#pragma unroll
    for (int a = 0; a < kTileVecsPerThread; ++a) {
      float mt = -INFINITY;
#pragma unroll
      for (int b = 0; b < kKeysPerThread; ++b) {
        const int32_t p = k0 + tc + 8 * b;
        s[a][b] = p < tile.key1 && p <= qpos[a] ? s[a][b] * scale : -INFINITY;
        mt = fmaxf(mt, s[a][b]);
      }
#pragma unroll
      for (int x = 1; x < 8; x <<= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, x));
      const float m_new = fmaxf(m[a], mt);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: keep zeros
      const float alpha = expf(m[a] - m_use);
      float sum = 0.0f;
#pragma unroll
      for (int b = 0; b < kKeysPerThread; ++b) {
        const float pr = expf(s[a][b] - m_use);
        sp[(tj + 16 * a) * kProbStride + tc + 8 * b] = pr;
        sum += pr;
      }
      l[a] = l[a] * alpha + sum;
      m[a] = m_new;
#pragma unroll
      for (int kb = 0; kb < kDB; ++kb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[a][kb][e] *= alpha;
      }
    }
    __syncthreads();  // K read by all, probabilities written

    LoadKeyTile<kDB>(skv, kv, base, seq.block_table, 1, kvh, k0, tile.key1);
    __syncthreads();

    // o += P · V over the key tile.
#pragma unroll 2
    for (int c = 0; c < kTileKeys; c += 4) {
      float4 pv[kTileVecsPerThread];
#pragma unroll
      for (int a = 0; a < kTileVecsPerThread; ++a) {
        pv[a] = *reinterpret_cast<const float4*>(sp + (tj + 16 * a) * kProbStride + c);
      }
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        float4 vr[kDB];
#pragma unroll
        for (int kb = 0; kb < kDB; ++kb) {
          const int d = 4 * tc + 32 * kb;
          vr[kb] = d < D ? *reinterpret_cast<const float4*>(skv + (c + cc) * Dp + d)
                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int a = 0; a < kTileVecsPerThread; ++a) {
          const float pr = cc == 0 ? pv[a].x : cc == 1 ? pv[a].y : cc == 2 ? pv[a].z : pv[a].w;
#pragma unroll
          for (int kb = 0; kb < kDB; ++kb) {
            o[a][kb][0] = fmaf(pr, vr[kb].x, o[a][kb][0]);
            o[a][kb][1] = fmaf(pr, vr[kb].y, o[a][kb][1]);
            o[a][kb][2] = fmaf(pr, vr[kb].z, o[a][kb][2]);
            o[a][kb][3] = fmaf(pr, vr[kb].w, o[a][kb][3]);
          }
        }
      }
    }
    __syncthreads();  // V and probabilities read before the next tile
  }

  // Row sums over the 8 threads, then the owned outputs.
#pragma unroll
  for (int a = 0; a < kTileVecsPerThread; ++a) {
#pragma unroll
    for (int x = 1; x < 8; x <<= 1) l[a] += __shfl_xor_sync(0xffffffffu, l[a], x);
  }
#pragma unroll
  for (int a = 0; a < kTileVecsPerThread; ++a) {
    const int j = tj + 16 * a;
    if (j >= n_vec) continue;
    const int r = j / G, h = kvh * G + j % G;
    float* dst;
    float div = 1.0f;  // whole contexts are normalized here, key ranges by the combine kernel
    if (tile.partial < 0) {
      dst = out + (seq.row0 + tile.i0 + r) * ldo + static_cast<int64_t>(h) * D;
      div = l[a];
    } else {
      if (tile.key0 > qpos[a]) continue;  // the row's context ends before this range
      const int64_t slot = tile.partial + static_cast<int64_t>(r) * tile.n_chunks;
      dst = partials + (slot * n_heads + h) * (D + 2);
      if (tc == 0) {
        dst[D] = m[a];
        dst[D + 1] = l[a];
      }
    }
#pragma unroll
    for (int kb = 0; kb < kDB; ++kb) {
      const int d = 4 * tc + 32 * kb;
      if (d >= D) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e) dst[d + e] = o[a][kb][e] / div;
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

namespace {

template <typename KvT>
cudaError_t LaunchChunks(float* out, int64_t ldo, const float* q, int64_t ldq,
                         const KvLayerView& kv, const AttnSeq* seqs, const AttnWorkItem* items,
                         int32_t n_items, int32_t chunk, float* partials, int n_heads, float scale,
                         cudaStream_t stream) {
  const int G = n_heads / kv.n_kv_heads;
  const size_t smem = sizeof(float) * (static_cast<size_t>(G) * kv.head_dim +
                                       static_cast<size_t>(G) * chunk + 2 * G);
  if (smem > (48 << 10)) {
    cudaError_t e = cudaFuncSetAttribute(
        AttnChunkKernel<KvT>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>(n_items), static_cast<unsigned>(kv.n_kv_heads));
  PDS_LAUNCH(grid, dim3(kAttnThreads), smem, stream, AttnChunkKernel<KvT>)
  (out, ldo, q, ldq, kv, seqs, items, chunk, partials, n_heads, scale);
  return cudaGetLastError();
}

template <typename KvT, int kDB>
cudaError_t LaunchTilesFor(float* out, int64_t ldo, const float* q, int64_t ldq,
                           const KvLayerView& kv, const AttnSeq* seqs, const AttnTile* tiles,
                           int32_t n_tiles, float* partials, int n_heads, float scale,
                           cudaStream_t stream) {
  const size_t smem = sizeof(float) * static_cast<size_t>(TileSmemFloats(kv.head_dim));
  if (smem > (48 << 10)) {
    cudaError_t e =
        cudaFuncSetAttribute(AttnTileKernel<KvT, kDB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  // Tile-major: blocks start in the plan's order, longest key range first.
  const dim3 grid(static_cast<unsigned>(static_cast<int64_t>(n_tiles) * kv.n_kv_heads));
  PDS_LAUNCH(grid, dim3(kTileThreads), smem, stream, AttnTileKernel<KvT, kDB>)
  (out, ldo, q, ldq, kv, seqs, tiles, partials, n_heads, scale);
  return cudaGetLastError();
}

template <typename KvT>
cudaError_t LaunchTiles(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                        const AttnSeq* seqs, const AttnTile* tiles, int32_t n_tiles,
                        float* partials, int n_heads, float scale, cudaStream_t stream) {
  if (kv.head_dim <= 64) {
    return LaunchTilesFor<KvT, 2>(out, ldo, q, ldq, kv, seqs, tiles, n_tiles, partials, n_heads,
                                  scale, stream);
  }
  return LaunchTilesFor<KvT, 4>(out, ldo, q, ldq, kv, seqs, tiles, n_tiles, partials, n_heads,
                                scale, stream);
}

}  // namespace

cudaError_t PagedAttention(float* out, int64_t ldo, const float* q, int64_t ldq,
                           const KvLayerView& kv, const AttnSeq* seqs, const AttnWorkItem* items,
                           int32_t n_items, const AttnTile* tiles, int32_t n_tiles,
                           const AttnSplitRow* split_rows, int32_t n_split_rows, int32_t chunk,
                           float* partials, int n_heads, float scale, cudaStream_t stream) {
  if (n_items == 0 && n_tiles == 0) return cudaSuccess;
  if (kv.head_dim > kMaxAttnHeadDim || kv.n_kv_heads <= 0 || n_heads % kv.n_kv_heads != 0 ||
      (n_items > 0 && chunk <= 0)) {
    return cudaErrorInvalidValue;
  }
  const int G = n_heads / kv.n_kv_heads;
  if (n_tiles > 0 &&
      (!AttnTiledSupported(G, kv.head_dim) || reinterpret_cast<uintptr_t>(kv.base) % 16 != 0)) {
    return cudaErrorInvalidValue;
  }
  if (kv.kv_type != DType::kF16 && kv.kv_type != DType::kF32) return cudaErrorInvalidValue;
  const bool f16 = kv.kv_type == DType::kF16;
  if (n_items > 0) {
    cudaError_t e = f16 ? LaunchChunks<__half>(out, ldo, q, ldq, kv, seqs, items, n_items, chunk,
                                               partials, n_heads, scale, stream)
                        : LaunchChunks<float>(out, ldo, q, ldq, kv, seqs, items, n_items, chunk,
                                              partials, n_heads, scale, stream);
    if (e != cudaSuccess) return e;
  }
  if (n_tiles > 0) {
    cudaError_t e = f16 ? LaunchTiles<__half>(out, ldo, q, ldq, kv, seqs, tiles, n_tiles, partials,
                                              n_heads, scale, stream)
                        : LaunchTiles<float>(out, ldo, q, ldq, kv, seqs, tiles, n_tiles, partials,
                                             n_heads, scale, stream);
    if (e != cudaSuccess) return e;
  }
  if (n_split_rows == 0) return cudaSuccess;
  PDS_LAUNCH(dim3(static_cast<unsigned>(n_split_rows), static_cast<unsigned>(n_heads)),
             dim3(kAttnThreads), 0, stream, AttnCombineKernel)
  (out, ldo, split_rows, partials, n_heads, kv.head_dim);
  return cudaGetLastError();
}

}  // namespace pdserve::kernels::cuda
