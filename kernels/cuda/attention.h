// Attention over the paged KV cache on the GPU: storing new K/V rows and
// attending for prefill chunks (causal over the new tokens plus the cached
// prefix) and decode tokens of many sequences in one call. KV layout and
// AttnSeq as in kernels/cpu/attention.h (the CPU reference): kv.base and
// every AttnSeq::block_table point to device memory here.
//
// Two kernels share the work of a batch:
//   - decode rows (and prefills shorter than kMinTiledRows): the context of
//     each query row is cut into chunks of `chunk` positions (split-K, as in
//     flash-decoding); one thread block per (chunk, KV head) scores the chunk
//     for all query heads of the KV head's group;
//   - prefill rows: one thread block per (tile, KV head) takes a tile of up
//     to kAttnTileVecs / group consecutive rows of one sequence with the
//     group's query heads, streams the keys through shared memory 64 at a
//     time with an online softmax (as in flash attention), so each K/V row
//     is read once per tile instead of once per query row. A tile whose
//     context is long next to the batch's parallelism is cut into key ranges.
// Rows cut into several chunks or key ranges are merged by a third kernel.
// PlanAttention routes the rows, and picks the chunk lengths so that short
// batches still fill the GPU and long prompts do not need more partial
// results than the caller's scratch holds.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/cuda_compat.h"

namespace pdserve::kernels::cuda {

// Head dims up to this are supported.
inline constexpr int kMaxAttnHeadDim = 256;

struct AttnWorkItem {
  int32_t seq;      // index into the AttnSeq array
  int32_t i;        // new token of that sequence (its row is row0 + i)
  int32_t chunk;    // positions [chunk * plan.chunk, ...) of its context
  int32_t partial;  // partial-result slot, or -1: the row has one chunk
};

// Query vectors (query row, head of the group) per tile of the prefill
// kernel, and the fewest new tokens of a sequence that make its rows tiles.
inline constexpr int kAttnTileVecs = 64;
inline constexpr int32_t kMinTiledRows = 8;

// Whether the tiled prefill kernel handles this shape (else every row takes
// the chunk kernel).
inline bool AttnTiledSupported(int group, int head_dim) {
  return group >= 1 && group <= 16 && head_dim % 4 == 0 && head_dim <= 128;
}
// Rows of one tile.
inline int AttnTileRows(int group) { return kAttnTileVecs / group; }

struct AttnTile {
  int32_t seq;       // index into the AttnSeq array
  int32_t i0;        // first new token: rows row0 + i0 .. row0 + i0 + n_rows - 1
  int32_t n_rows;    // <= AttnTileRows(group)
  int32_t key0;      // context positions [key0, key1), causal per row
  int32_t key1;      // <= n_past + i0 + n_rows
  int32_t partial;   // slot of row i0's result for this key range, or -1: the
                     // whole context, results go to out
  int32_t n_chunks;  // key ranges of the tile: row i0 + r's slot is partial + r · n_chunks
  int32_t unused = 0;
};

struct AttnSplitRow {
  int32_t row;
  int32_t n_chunks;
  int32_t partial0;  // its chunks' slots are partial0 .. partial0 + n_chunks - 1
  int32_t unused = 0;
};

struct AttnPlan {
  int32_t chunk = 0;  // of the chunk kernel's items
  std::vector<AttnWorkItem> items;
  int32_t tile_chunk = 0;       // key range of a split tile, 0: no tile is split
  std::vector<AttnTile> tiles;  // longest key range first
  std::vector<AttnSplitRow> split_rows;
  int32_t n_partials = 0;
};

// Largest chunk length the kernel's shared memory allows.
int32_t MaxAttnChunk(int group, int head_dim);
// Partial-result slots to allocate for batches of up to max_tokens tokens
// with contexts of up to max_ctx positions.
int32_t AttnPartialSlots(int32_t max_tokens, int32_t max_ctx, int group, int head_dim);
// Floats of one partial slot: n_heads × (head_dim + 2).
inline int64_t AttnPartialFloats(int n_heads, int head_dim) {
  return static_cast<int64_t>(n_heads) * (head_dim + 2);
}

// Plans a batch (host-side AttnSeq values; block_table is not read): rows of
// sequences with at least kMinTiledRows new tokens become tiles (when
// AttnTiledSupported), the others chunk-kernel items. Picks the longest
// chunk that still gives about two blocks per SM, within max_partials, and
// cuts tiles into key ranges only while there are fewer than two (tile, KV
// head) blocks per SM. False when even the longest chunk needs more partial
// slots.
bool PlanAttention(const AttnSeq* seqs, int n_seqs, int group, int head_dim, int n_kv_heads,
                   int n_sm, int32_t max_partials, AttnPlan* plan);

// Writes rows of k and v (n_rows, row stride ld floats) into the cache at
// slots[r] = block id · block_size + offset in block.
cudaError_t StoreKv(const KvLayerView& kv, const int64_t* slots, const float* k, const float* v,
                    int64_t ld, int64_t n_rows, cudaStream_t stream);

// RoPE (ops.h Rope) on q in place and on k as it is stored, then StoreKv.
// q: (n_rows, n_heads · head_dim) with stride ldq; k, v with stride ldkv.
cudaError_t RopeStoreKv(float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv,
                        const KvLayerView& kv, const int32_t* pos, const int64_t* slots,
                        const float* cos_sin, int64_t n_rows, int n_heads, int n_rot,
                        cudaStream_t stream);

// out[row] = softmax(scale · q[row] · Kᵀ, causal) · V. seqs, items, tiles
// and split_rows are device copies of the plan's arrays; partials has at
// least plan.n_partials slots of AttnPartialFloats floats. With tiles, kv.base
// must be 16-byte aligned.
cudaError_t PagedAttention(float* out, int64_t ldo, const float* q, int64_t ldq,
                           const KvLayerView& kv, const AttnSeq* seqs, const AttnWorkItem* items,
                           int32_t n_items, const AttnTile* tiles, int32_t n_tiles,
                           const AttnSplitRow* split_rows, int32_t n_split_rows, int32_t chunk,
                           float* partials, int n_heads, float scale, cudaStream_t stream);

}  // namespace pdserve::kernels::cuda
