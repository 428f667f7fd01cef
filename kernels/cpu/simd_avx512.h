// Small AVX-512 helpers shared by the *_avx512.cc files. Include only from
// files built with AVX-512 flags.
#pragma once

#include <immintrin.h>

namespace pdserve::kernels::internal {

// e^x for x in float range, relative error about 2e-7. Inputs below -87
// clamp to e^-87 (about 1.6e-38) so results stay normal; callers that need
// exact zeros (masked scores) mask them afterwards.
inline __m512 Exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));  // log2(e)
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // 2^f for f in [-0.5, 0.5]: Taylor series in f·ln2 to degree 6.
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5403530393381608e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Transposes the 16x16 matrix of floats whose rows are r[0..15], in place.
inline void Transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d a2 = _mm512_castps_pd(t[4 * i + 2]), a3 = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  // r[4i + e], 128-bit lane L now holds rows 4i..4i+3, columns 4L + e.
  for (int i = 0; i < 2; ++i) {
    for (int e = 0; e < 4; ++e) {
      t[8 * i + e] = _mm512_shuffle_f32x4(r[8 * i + e], r[8 * i + 4 + e], 0x88);
      t[8 * i + 4 + e] = _mm512_shuffle_f32x4(r[8 * i + e], r[8 * i + 4 + e], 0xdd);
    }
  }
  for (int e = 0; e < 8; ++e) {
    r[e] = _mm512_shuffle_f32x4(t[e], t[8 + e], 0x88);
    r[8 + e] = _mm512_shuffle_f32x4(t[e], t[8 + e], 0xdd);
  }
}

}  // namespace pdserve::kernels::internal
