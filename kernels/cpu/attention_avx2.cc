// The portable tiled attention built with AVX2 + FMA + F16C flags; only
// called when the CPU has them (isa.cc).
#include <cmath>
#include <cstring>

#include "kernels/cpu/attention_internal.h"
#include "kernels/cpu/thread_pool.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace pdserve::kernels::internal {
namespace {
#include "kernels/cpu/attention_tiled.inc"
}  // namespace

bool PagedAttentionAvx2(float* out, int64_t ldo, const float* q, int64_t ldq, const KvLayerView& kv,
                        const AttnSeq* seqs, int n_seqs, int n_heads, float scale,
                        const WorkPlan& plan, float* scratch, float* partials, ThreadPool* pool,
                        int ith, int nth) {
  if (!TiledSupports(kv, n_heads)) return false;
  PagedAttentionTiled(out, ldo, q, ldq, kv, seqs, n_seqs, n_heads, scale, plan, scratch, partials,
                      pool, ith, nth);
  return true;
}

}  // namespace pdserve::kernels::internal
