// AVX-512 versions of the ops that need exp (scalar expf dominates them).
#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <cmath>

#include "kernels/cpu/simd_avx512.h"

namespace pdserve::kernels::internal {

void SwiGluAvx512(float* y, const float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
  }
  for (; i < n; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void SoftmaxAvx512(float* x, int64_t n) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  float max = _mm512_reduce_max_ps(vmax);
  for (int64_t j = i; j < n; ++j) max = x[j] > max ? x[j] : max;
  const __m512 m = _mm512_set1_ps(max);
  __m512 vsum = _mm512_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
    _mm512_storeu_ps(x + i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  float sum = _mm512_reduce_add_ps(vsum);
  for (int64_t j = i; j < n; ++j) {
    x[j] = std::exp(x[j] - max);
    sum += x[j];
  }
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (i = 0; i + 16 <= n; i += 16)
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
  for (int64_t j = i; j < n; ++j) x[j] *= 1.0f / sum;
}

}  // namespace pdserve::kernels::internal

#else

namespace pdserve::kernels::internal {
void SwiGluAvx512(float*, const float*, const float*, int64_t) {}
void SoftmaxAvx512(float*, int64_t) {}
}  // namespace pdserve::kernels::internal

#endif
