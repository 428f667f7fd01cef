// F16C conversions, built with the AVX2 flags (F16C comes with them).
#include "kernels/cpu/attention_internal.h"
#include "kernels/dtype.h"

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>

namespace pdserve::kernels::internal {
void F32ToF16RowF16c(uint16_t* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) y[i] = F32ToF16(x[i]);
}
}  // namespace pdserve::kernels::internal

#else

namespace pdserve::kernels::internal {
void F32ToF16RowF16c(uint16_t* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = F32ToF16(x[i]);
}
}  // namespace pdserve::kernels::internal

#endif
