#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention_internal.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace pdserve::kernels {
namespace {

using internal::ForEachUnit;
using internal::KvRow;
using internal::PartialFloats;
using internal::RowsPerItem;
using internal::WorkPlan;
using internal::WorkUnit;

#include "kernels/cpu/attention_tiled.inc"

// Per thread: the scalar path's scores (max_ctx) and the SIMD paths' queries,
// outputs, K/V tiles and softmax state (AVX-512: 64 query heads of up to 256
// dims, three copies, and four K tiles; tiled: two).
int64_t WorkFloats(int32_t max_ctx) { return int64_t{max_ctx} + 81920; }

// Per thread, for the partials of split decode rows: one query head's
// segment takes head_dim + 2 floats, a split sequence n_heads of them per 64
// keys. 16 per token holds one sequence of 9 heads of 64 (SmolLM2) on 1
// thread, of 32 heads of 128 (Llama-3-8B) on 5; a plan that does not fit
// is not split.
int64_t PartialFloatsPerThread(int32_t max_ctx) { return 16 * int64_t{max_ctx} + 8192; }

inline float LoadKv(const KvLayerView& kv, const uint8_t* row, int d) {
  if (kv.kv_type == DType::kF16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * d, 2);
    return F16ToF32(h);
  }
  float f;
  std::memcpy(&f, row + 4 * d, 4);
  return f;
}

}  // namespace

void StoreKv(const KvLayerView& kv, const AttnSeq& seq, const float* k, const float* v,
             int64_t ld) {
  for (int32_t i = 0; i < seq.n_new; ++i) {
    const int32_t pos = seq.n_past + i;
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      for (int kv_idx = 0; kv_idx < 2; ++kv_idx) {
        const float* src = (kv_idx == 0 ? k : v) + i * ld + h * kv.head_dim;  // (head_dim)
        uint8_t* dst = const_cast<uint8_t*>(KvRow(kv, seq, kv_idx, h, pos));
        if (kv.kv_type == DType::kF16 && ActiveIsa() != Isa::kScalar) {
          internal::F32ToF16RowF16c(reinterpret_cast<uint16_t*>(dst), src, kv.head_dim);
        } else if (kv.kv_type == DType::kF16) {
          for (int d = 0; d < kv.head_dim; ++d) {
            const uint16_t hv = F32ToF16(src[d]);
            std::memcpy(dst + 2 * d, &hv, 2);
          }
        } else {
          std::memcpy(dst, src, kv.head_dim * sizeof(float));
        }
      }
    }
  }
}

int64_t AttentionScratchFloats(int32_t max_ctx) {
  return WorkFloats(max_ctx) + PartialFloatsPerThread(max_ctx);
}

void PagedAttention(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                    const AttnSeq* seqs, int n_seqs, int n_heads, float scale, int32_t max_ctx,
                    float* scratch, ThreadPool* pool, int ith, int nth) {
  // scratch: every thread's working floats, then the shared partials.
  internal::PagedAttentionWith({}, out, ldo, q, ldq, kv, seqs, n_seqs, n_heads, scale, max_ctx,
                               scratch, scratch + nth * WorkFloats(max_ctx),
                               nth * PartialFloatsPerThread(max_ctx), pool, ith, nth);
}

int internal::PagedAttentionWith(const AttnOptions& opt, float* out, int64_t ldo, const float* q,
                                 int64_t ldq, const KvLayerView& kv, const AttnSeq* seqs,
                                 int n_seqs, int n_heads, float scale, int32_t max_ctx,
                                 float* scratch, float* partials, int64_t partial_floats,
                                 ThreadPool* pool, int ith, int nth) {
  float* mine = scratch + ith * WorkFloats(max_ctx);
  const Isa isa = ActiveIsa();
  const bool avx512 = isa == Isa::kAvx512 && Avx512AttentionSupports(kv, n_heads);
  if (avx512 || TiledSupports(kv, n_heads)) {
    const WorkPlan plan(opt, kv, seqs, n_seqs, n_heads, partial_floats,
                        /*can_sync=*/pool != nullptr || nth == 1, nth);
    if (avx512) {
      PagedAttentionAvx512(out, ldo, q, ldq, kv, seqs, n_seqs, n_heads, scale, plan, mine, partials,
                           pool, ith, nth);
    } else if (isa == Isa::kScalar ||
               !PagedAttentionAvx2(out, ldo, q, ldq, kv, seqs, n_seqs, n_heads, scale, plan, mine,
                                   partials, pool, ith, nth)) {
      PagedAttentionTiled(out, ldo, q, ldq, kv, seqs, n_seqs, n_heads, scale, plan, mine, partials,
                          pool, ith, nth);
    }
    return plan.n_split_rows();
  }
  // Head sizes past 256: one (row, head) at a time over scores in scratch,
  // never split along the context.
  float* scores = mine;           // (max_ctx)
  float* acc = scores + max_ctx;  // (head_dim)
  const int group = n_heads / kv.n_kv_heads;
  int64_t item = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const AttnSeq& seq = seqs[s];
    for (int32_t i = 0; i < seq.n_new; ++i) {
      for (int h = 0; h < n_heads; ++h, ++item) {
        // Interleaved items balance the causal triangle across threads.
        if (item % nth != ith) continue;
        const int kvh = h / group;
        const float* qr = q + (seq.row0 + i) * ldq + h * kv.head_dim;  // (head_dim)
        const int32_t n_ctx = seq.n_past + i + 1;
        float max = -INFINITY;
        for (int32_t p = 0; p < n_ctx; ++p) {
          const uint8_t* kr = KvRow(kv, seq, 0, kvh, p);
          float dot = 0;
          for (int d = 0; d < kv.head_dim; ++d) dot += qr[d] * LoadKv(kv, kr, d);
          scores[p] = dot * scale;
          max = scores[p] > max ? scores[p] : max;
        }
        float sum = 0;
        for (int32_t p = 0; p < n_ctx; ++p) {
          scores[p] = std::exp(scores[p] - max);
          sum += scores[p];
        }
        for (int d = 0; d < kv.head_dim; ++d) acc[d] = 0;
        for (int32_t p = 0; p < n_ctx; ++p) {
          const uint8_t* vr = KvRow(kv, seq, 1, kvh, p);
          for (int d = 0; d < kv.head_dim; ++d) acc[d] += scores[p] * LoadKv(kv, vr, d);
        }
        float* o = out + (seq.row0 + i) * ldo + h * kv.head_dim;  // (head_dim)
        for (int d = 0; d < kv.head_dim; ++d) o[d] = acc[d] / sum;
      }
    }
  }
  return 0;
}

namespace internal {

WorkPlan::WorkPlan(const AttnOptions& opt, const KvLayerView& kv, const AttnSeq* seqs, int n_seqs,
                   int n_heads, int64_t partial_floats, bool can_sync, int nth)
    : segment_keys_(opt.segment_keys), mode_(opt.split), nth_(nth) {
  const int group = n_heads / kv.n_kv_heads;
  const int32_t rows = RowsPerItem(group);
  int64_t n_items = 0;
  for (int s = 0; s < n_seqs; ++s) n_items += kv.n_kv_heads * ((seqs[s].n_new + rows - 1) / rows);
  // Fewer than four items per thread leave threads idle or unevenly loaded
  // (one sequence of SmolLM2: 3 KV heads on 2 threads; two: 6 items, which
  // the AVX-512 path would otherwise cut into one item per query head, each
  // converting the same K/V tiles again); more are spread well enough by
  // interleaving, without the barrier and the fold.
  const bool few_items = nth > 1 && n_items < 4 * nth;
  if (mode_ == SplitMode::kNever || (mode_ == SplitMode::kAuto && !few_items) ||
      (nth > 1 && !can_sync)) {
    return;
  }
  int n_rows = 0;
  int64_t need = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const int32_t n_ctx = seqs[s].n_past + seqs[s].n_new;
    if (!SplitCandidate(seqs[s])) continue;
    ++n_rows;
    need += int64_t{n_heads} * Segments(n_ctx) * PartialFloats(kv.head_dim);
  }
  if (n_rows == 0 || need > partial_floats) return;
  n_split_rows_ = n_rows;
  for (int s = 0; s < n_seqs; ++s) {
    total_cost_ += kv.n_kv_heads * ItemCost(seqs[s], 0, seqs[s].n_new);
  }
}

bool WorkPlan::SplitCandidate(const AttnSeq& seq) const {
  return seq.n_new == 1 &&
         (mode_ == SplitMode::kAlways || seq.n_past + seq.n_new >= kMinSplitContext);
}

bool WorkPlan::Splits(const AttnSeq& seq) const { return n_split_rows_ > 0 && SplitCandidate(seq); }

int WorkPlan::Owner(int64_t c0, int64_t c1) const {
  if (total_cost_ <= 0) return 0;
  // The thread whose equal share of the total holds the unit's midpoint.
  const int64_t t = (c0 + c1) * nth_ / (2 * total_cost_);
  return t < nth_ ? static_cast<int>(t) : nth_ - 1;
}

int64_t WorkPlan::ItemCost(const AttnSeq& seq, int32_t i0, int32_t i1) {
  // Σ over rows i of the n_past + i + 1 keys each sees.
  const int64_t n = i1 - i0;
  return n * seq.n_past + (int64_t{i0} + 1 + i1) * n / 2;
}

}  // namespace internal

void PagedAttentionRef(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                       const AttnSeq* seqs, int n_seqs, int n_heads, float scale) {
  const int group = n_heads / kv.n_kv_heads;
  for (int s = 0; s < n_seqs; ++s) {
    const AttnSeq& seq = seqs[s];
    for (int32_t i = 0; i < seq.n_new; ++i) {
      const int32_t n_ctx = seq.n_past + i + 1;
      std::vector<double> p(n_ctx);
      for (int h = 0; h < n_heads; ++h) {
        const int kvh = h / group;
        const float* qr = q + (seq.row0 + i) * ldq + h * kv.head_dim;
        double max = -INFINITY;
        for (int32_t t = 0; t < n_ctx; ++t) {
          const uint8_t* kr = KvRow(kv, seq, 0, kvh, t);
          double dot = 0;
          for (int d = 0; d < kv.head_dim; ++d)
            dot += static_cast<double>(qr[d]) * LoadKv(kv, kr, d);
          p[t] = dot * scale;
          max = p[t] > max ? p[t] : max;
        }
        double sum = 0;
        for (int32_t t = 0; t < n_ctx; ++t) sum += (p[t] = std::exp(p[t] - max));
        for (int d = 0; d < kv.head_dim; ++d) {
          double o = 0;
          for (int32_t t = 0; t < n_ctx; ++t) o += p[t] * LoadKv(kv, KvRow(kv, seq, 1, kvh, t), d);
          out[(seq.row0 + i) * ldo + h * kv.head_dim + d] = static_cast<float>(o / sum);
        }
      }
    }
  }
}

}  // namespace pdserve::kernels
