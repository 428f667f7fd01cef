// Internals shared by attention*.cc.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace pdserve::kernels::internal {

// Row of K (kv_idx 0) or V (kv_idx 1) of KV head h at position pos.
inline const uint8_t* KvRow(const KvLayerView& kv, const AttnSeq& seq, int kv_idx, int h,
                            int32_t pos) {
  const uint8_t* block = kv.Block(seq.block_table[pos / kv.block_size]);
  const int64_t row =
      (static_cast<int64_t>(kv_idx) * kv.n_kv_heads + h) * kv.block_size + pos % kv.block_size;
  return block + row * kv.head_dim * kv.ElemBytes();
}

// Keys per segment of a row's context (attention.h). A row's result depends
// on it, so it is one constant for every call: 64 keys keep the fold (one
// rescale of head_dim floats per query head) near 1% of the segment's work
// and split one 500-token context of 3 KV heads into 24 pieces.
constexpr int32_t kSegmentKeys = 64;

// Decode rows split from one full segment on. The split costs a barrier and
// a store and fold per segment; the split by query head it replaces converts
// each K/V tile once per query head and on 2 threads ran slower than 1 thread
// (SmolLM2 shapes, one pool.Run per call: 16 and 61 us at 128 and 512 keys,
// against 14 and 55 on 1 thread and 11 and 38 split by segment).
constexpr int32_t kMinSplitContext = kSegmentKeys;

// Query rows per item: as many as fill 64 query heads (both SIMD paths).
inline int32_t RowsPerItem(int group) { return group >= 64 ? 1 : 64 / group; }

enum class SplitMode {
  kAuto,    // split when few items and long contexts (WorkPlan)
  kNever,   // never split along the context
  kAlways,  // split every decode row (tests), even with one thread
};

struct AttnOptions {
  int32_t segment_keys = kSegmentKeys;  // tests vary it; each value is its own numerics
  SplitMode split = SplitMode::kAuto;
};

// A partial over one segment for one query head, as stored for the fold:
// [0] max score, [1] sum of exp(score - max), [2, 2 + head_dim) Σ p·V.
inline int64_t PartialFloats(int head_dim) { return head_dim + 2; }

// The division of one call's work, the same on every thread. Decode rows of
// the sequences it splits become one unit per (KV head, segment); every
// other item is one unit. Units take their turn in item order and go to
// threads in contiguous runs of about equal cost (keys times rows), so a
// thread's units share KV heads and no K/V tile is converted twice.
class WorkPlan {
 public:
  // partial_floats: room for partials (shared by all threads); can_sync:
  // whether the threads can meet at a barrier.
  WorkPlan(const AttnOptions& opt, const KvLayerView& kv, const AttnSeq* seqs, int n_seqs,
           int n_heads, int64_t partial_floats, bool can_sync, int nth);

  bool split() const { return n_split_rows_ > 0; }
  int n_split_rows() const { return n_split_rows_; }
  int32_t segment_keys() const { return segment_keys_; }
  // Whether this sequence's decode row is split into segments.
  bool Splits(const AttnSeq& seq) const;
  int32_t Segments(int32_t n_ctx) const { return (n_ctx + segment_keys_ - 1) / segment_keys_; }
  // The thread that runs a unit spanning costs [c0, c1) of the total.
  int Owner(int64_t c0, int64_t c1) const;
  // Keys times rows of query rows [i0, i1) of one sequence (one KV head).
  static int64_t ItemCost(const AttnSeq& seq, int32_t i0, int32_t i1);

 private:
  bool SplitCandidate(const AttnSeq& seq) const;

  int32_t segment_keys_;
  SplitMode mode_;
  int n_split_rows_ = 0;
  int64_t total_cost_ = 0;
  int nth_;
};

// One unit of a split call. seg < 0: the whole item, rows [i0, i1);
// otherwise segment seg of decode row i0, whose partials for query head g
// of the KV head go to partial + g * n_seg * PartialFloats + seg * PartialFloats.
struct WorkUnit {
  int seq;
  int kv_head;
  int32_t i0, i1;
  int32_t seg, n_seg;
  int64_t partial;  // float offset of the item's partials (split rows)
  int owner;
};

// Calls fn(const WorkUnit&) for every unit of the plan, in order.
template <typename Fn>
void ForEachUnit(const WorkPlan& plan, const KvLayerView& kv, const AttnSeq* seqs, int n_seqs,
                 int n_heads, Fn&& fn) {
  const int group = n_heads / kv.n_kv_heads;
  const int32_t rows = RowsPerItem(group);
  const int64_t item_partials = group * PartialFloats(kv.head_dim);
  int64_t cost = 0, partial = 0;
  for (int si = 0; si < n_seqs; ++si) {
    const AttnSeq& seq = seqs[si];
    const bool split = plan.Splits(seq);
    const int32_t n_ctx = seq.n_past + seq.n_new;
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      if (split) {
        const int32_t n_seg = plan.Segments(n_ctx);
        for (int32_t k = 0; k < n_seg; ++k) {
          const int32_t p0 = k * plan.segment_keys();
          const int32_t keys = n_ctx - p0 < plan.segment_keys() ? n_ctx - p0 : plan.segment_keys();
          fn(WorkUnit{si, h, 0, 1, k, n_seg, partial, plan.Owner(cost, cost + keys)});
          cost += keys;
        }
        partial += item_partials * n_seg;
        continue;
      }
      for (int32_t i0 = 0; i0 < seq.n_new; i0 += rows) {
        const int32_t i1 = i0 + rows < seq.n_new ? i0 + rows : seq.n_new;
        const int64_t c = WorkPlan::ItemCost(seq, i0, i1);
        fn(WorkUnit{si, h, i0, i1, -1, 0, -1, plan.Owner(cost, cost + c)});
        cost += c;
      }
    }
  }
}

// Same contract as PagedAttention; scratch is this thread's share, partials
// the plan's (shared by all threads).
void PagedAttentionAvx512(float* out, int64_t ldo, const float* q, int64_t ldq,
                          const KvLayerView& kv, const AttnSeq* seqs, int n_seqs, int n_heads,
                          float scale, const WorkPlan& plan, float* scratch, float* partials,
                          ThreadPool* pool, int ith, int nth);

// Whether PagedAttentionAvx512 handles this head size.
inline bool Avx512AttentionSupports(const KvLayerView& kv, int n_heads) {
  return kv.head_dim % 16 == 0 && kv.head_dim <= 256 && n_heads / kv.n_kv_heads <= 64;
}

// The portable tiled path (attention_tiled.inc) built for AVX2; returns
// false (doing nothing) for head sizes it does not handle.
bool PagedAttentionAvx2(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                        const AttnSeq* seqs, int n_seqs, int n_heads, float scale,
                        const WorkPlan& plan, float* scratch, float* partials, ThreadPool* pool,
                        int ith, int nth);

// PagedAttention with explicit options and a partials area of its own
// (partial_floats floats shared by all threads; scratch as PagedAttention's,
// whose own partials area it leaves unused). Returns the number of decode
// rows split along the context (the same on every thread).
int PagedAttentionWith(const AttnOptions& opt, float* out, int64_t ldo, const float* q, int64_t ldq,
                       const KvLayerView& kv, const AttnSeq* seqs, int n_seqs, int n_heads,
                       float scale, int32_t max_ctx, float* scratch, float* partials,
                       int64_t partial_floats, ThreadPool* pool, int ith, int nth);

// Converts n floats to IEEE halves (round to nearest even) with F16C.
void F32ToF16RowF16c(uint16_t* y, const float* x, int64_t n);

}  // namespace pdserve::kernels::internal
