// Host-side planning for PagedAttention (no device code).
#include <algorithm>

#include "kernels/cuda/attention.h"

namespace pdserve::kernels::cuda {
namespace {

// Dynamic shared memory the chunk kernel may use without opting in.
constexpr int64_t kSmemBytes = 48 << 10;
constexpr int32_t kMinChunk = 64;
// Key ranges of split tiles: multiples of the tile kernel's 64 keys.
constexpr int32_t kMaxTileChunk = 4096;
constexpr int32_t kMinTileChunk = 128;

int64_t CeilDiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int32_t MaxAttnChunk(int group, int head_dim) {
  // (G·D query floats + G·chunk scores + 2·G softmax floats) · 4 bytes.
  const int64_t limit = (kSmemBytes / 4 - static_cast<int64_t>(group) * (head_dim + 2)) / group;
  int32_t c = kMinChunk;
  while (c * 2 <= limit && c < (1 << 20)) c *= 2;
  return c;
}

int32_t AttnPartialSlots(int32_t max_tokens, int32_t max_ctx, int group, int head_dim) {
  const int64_t need = max_tokens * CeilDiv64(max_ctx, MaxAttnChunk(group, head_dim));
  return static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(need, 4096), 1 << 30));
}

bool PlanAttention(const AttnSeq* seqs, int n_seqs, int group, int head_dim, int n_kv_heads,
                   int n_sm, int32_t max_partials, AttnPlan* plan) {
  const bool can_tile = AttnTiledSupported(group, head_dim);
  auto tiled = [&](const AttnSeq& s) { return can_tile && s.n_new >= kMinTiledRows; };

  // Chunk kernel: the rows of the other sequences.
  auto count = [&](int32_t c, int64_t* items, int64_t* partials) {
    *items = *partials = 0;
    for (int s = 0; s < n_seqs; ++s) {
      if (tiled(seqs[s])) continue;
      for (int32_t i = 0; i < seqs[s].n_new; ++i) {
        const int64_t n = CeilDiv64(seqs[s].n_past + i + 1, c);
        *items += n;
        if (n > 1) *partials += n;
      }
    }
  };
  int32_t chosen = 0;
  for (int32_t c = MaxAttnChunk(group, head_dim); c >= kMinChunk; c /= 2) {
    int64_t items, partials;
    count(c, &items, &partials);
    if (partials > max_partials) break;  // shorter chunks only need more
    chosen = c;
    if (items == 0 || items * n_kv_heads >= 2LL * n_sm) break;
  }
  if (chosen == 0) return false;
  plan->chunk = chosen;
  plan->items.clear();
  plan->tiles.clear();
  plan->split_rows.clear();
  plan->n_partials = 0;
  for (int s = 0; s < n_seqs; ++s) {
    if (tiled(seqs[s])) continue;
    for (int32_t i = 0; i < seqs[s].n_new; ++i) {
      const int32_t n = static_cast<int32_t>(CeilDiv64(seqs[s].n_past + i + 1, chosen));
      if (n == 1) {
        plan->items.push_back({s, i, 0, -1});
        continue;
      }
      plan->split_rows.push_back({seqs[s].row0 + i, n, plan->n_partials});
      for (int32_t c = 0; c < n; ++c) plan->items.push_back({s, i, c, plan->n_partials + c});
      plan->n_partials += n;
    }
  }

  // Tiles: whole contexts, unless the (tile, KV head) blocks are fewer than
  // two per SM (a short prompt, or a few new tokens after a long cached
  // prefix); then key ranges of tile_chunk positions, halved until there are
  // two blocks per SM or the partial slots left run out. Two per SM is also
  // what fits (83 KiB of shared memory each at head_dim 128): with exactly
  // that many, every block starts at once and the SM holding two long ones
  // finishes last; cut into key ranges, the short ones fill in behind.
  const int32_t tile_rows = can_tile ? AttnTileRows(group) : 1;
  auto count_tiles = [&](int32_t tc, int64_t* blocks, int64_t* partials) {
    *blocks = *partials = 0;
    for (int s = 0; s < n_seqs; ++s) {
      if (!tiled(seqs[s])) continue;
      for (int32_t i0 = 0; i0 < seqs[s].n_new; i0 += tile_rows) {
        const int32_t n_rows = std::min(tile_rows, seqs[s].n_new - i0);
        const int64_t n = tc == 0 ? 1 : CeilDiv64(seqs[s].n_past + i0 + n_rows, tc);
        *blocks += n;
        if (n > 1) *partials += n * n_rows;
      }
    }
  };
  int64_t blocks, partials;
  count_tiles(0, &blocks, &partials);
  plan->tile_chunk = 0;
  for (int32_t tc = kMaxTileChunk; tc >= kMinTileChunk && blocks * n_kv_heads < 2LL * n_sm;
       tc /= 2) {
    int64_t b, p;
    count_tiles(tc, &b, &p);
    if (p > max_partials - plan->n_partials) break;
    if (b == blocks) continue;  // no context that long: nothing to split yet
    plan->tile_chunk = tc;
    blocks = b;
  }
  for (int s = 0; s < n_seqs; ++s) {
    if (!tiled(seqs[s])) continue;
    const AttnSeq& seq = seqs[s];
    for (int32_t i0 = 0; i0 < seq.n_new; i0 += tile_rows) {
      const int32_t n_rows = std::min(tile_rows, seq.n_new - i0);
      const int32_t ctx_end = seq.n_past + i0 + n_rows;
      const int32_t tc = plan->tile_chunk;
      const int32_t n = tc == 0 ? 1 : static_cast<int32_t>(CeilDiv64(ctx_end, tc));
      if (n == 1) {
        plan->tiles.push_back({s, i0, n_rows, 0, ctx_end, -1, 1});
        continue;
      }
      // Row r's key ranges are those that start at or before its position.
      for (int32_t r = 0; r < n_rows; ++r) {
        const int32_t row_chunks = (seq.n_past + i0 + r) / tc + 1;
        plan->split_rows.push_back({seq.row0 + i0 + r, row_chunks, plan->n_partials + r * n});
      }
      for (int32_t c = 0; c < n; ++c) {
        plan->tiles.push_back(
            {s, i0, n_rows, c * tc, std::min(ctx_end, (c + 1) * tc), plan->n_partials + c, n});
      }
      plan->n_partials += n * n_rows;
    }
  }
  // The GPU starts blocks roughly in order: longest first balances the SMs.
  std::stable_sort(
      plan->tiles.begin(), plan->tiles.end(),
      [](const AttnTile& a, const AttnTile& b) { return a.key1 - a.key0 > b.key1 - b.key0; });
  return true;
}

}  // namespace pdserve::kernels::cuda
