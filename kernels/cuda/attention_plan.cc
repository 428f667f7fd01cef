// Host-side planning for PagedAttention (no device code).
#include <algorithm>

#include "kernels/cuda/attention.h"

namespace pdserve::kernels::cuda {
namespace {

// Dynamic shared memory the chunk kernel may use without opting in.
constexpr int64_t kSmemBytes = 48 << 10;
constexpr int32_t kMinChunk = 64;

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
  auto count = [&](int32_t c, int64_t* items, int64_t* partials) {
    *items = *partials = 0;
    for (int s = 0; s < n_seqs; ++s) {
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
    if (items * n_kv_heads >= 2LL * n_sm) break;
  }
  if (chosen == 0) return false;
  plan->chunk = chosen;
  plan->items.clear();
  plan->split_rows.clear();
  plan->n_partials = 0;
  for (int s = 0; s < n_seqs; ++s) {
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
  return true;
}

}  // namespace pdserve::kernels::cuda
