// Reference (de)quantization, following ggml-quants.c's *_ref functions so
// that files we write round the way llama.cpp's do.
#include "kernels/quant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

namespace pdserve::kernels {
namespace {

// Round half away from zero in float, ggml's nearest_int (valid for |x| < 2^22).
inline int NearestInt(float f) {
  float val = f + 12582912.f;
  int i;
  std::memcpy(&i, &val, sizeof(int));
  return (i & 0x007fffff) - 0x00400000;
}

void DequantQ4_0(float* y, const BlockQ4_0* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[i * kQK + j] = d * ((x[i].qs[j] & 0x0F) - 8);
      y[i * kQK + j + kQK / 2] = d * ((x[i].qs[j] >> 4) - 8);
    }
  }
}

void DequantQ4_1(float* y, const BlockQ4_1* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d), m = F16ToF32(x[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[i * kQK + j] = d * (x[i].qs[j] & 0x0F) + m;
      y[i * kQK + j + kQK / 2] = d * (x[i].qs[j] >> 4) + m;
    }
  }
}

// Bit 4 of each element of a Q5_0/Q5_1 block: element j's in bit j of qh.
inline int Q5HighBit(uint32_t qh, int j) { return static_cast<int>((qh >> j) << 4) & 0x10; }

void DequantQ5_0(float* y, const BlockQ5_0* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = ((x[i].qs[j] & 0x0F) | Q5HighBit(qh, j)) - 16;
      const int q1 = ((x[i].qs[j] >> 4) | Q5HighBit(qh, j + kQK / 2)) - 16;
      y[i * kQK + j] = d * q0;
      y[i * kQK + j + kQK / 2] = d * q1;
    }
  }
}

void DequantQ5_1(float* y, const BlockQ5_1* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d), m = F16ToF32(x[i].m);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = (x[i].qs[j] & 0x0F) | Q5HighBit(qh, j);
      const int q1 = (x[i].qs[j] >> 4) | Q5HighBit(qh, j + kQK / 2);
      y[i * kQK + j] = d * q0 + m;
      y[i * kQK + j + kQK / 2] = d * q1 + m;
    }
  }
}

void DequantQ8_0(float* y, const BlockQ8_0* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d);
    for (int j = 0; j < kQK; ++j) y[i * kQK + j] = d * x[i].qs[j];
  }
}

void DequantQ8_1(float* y, const BlockQ8_1* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d);
    for (int j = 0; j < kQK; ++j) y[i * kQK + j] = d * x[i].qs[j];
  }
}

void DequantQ4_K(float* y, const BlockQ4_K* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d), dmin = F16ToF32(x[i].dmin);
    const uint8_t* q = x[i].qs;
    int is = 0;
    for (int j = 0; j < kQKK; j += 64) {
      uint8_t sc, m;
      GetScaleMinK4(is + 0, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      GetScaleMinK4(is + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}

void DequantQ5_K(float* y, const BlockQ5_K* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d), dmin = F16ToF32(x[i].dmin);
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    int is = 0;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < kQKK; j += 64) {
      uint8_t sc, m;
      GetScaleMinK4(is + 0, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      GetScaleMinK4(is + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      ql += 32;
      is += 2;
      u1 <<= 2;
      u2 <<= 2;
    }
  }
}

void DequantQ6_K(float* y, const BlockQ6_K* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = F16ToF32(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (int n = 0; n < kQKK; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

void DequantQ8_K(float* y, const BlockQ8_K* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    for (int j = 0; j < kQKK; ++j) y[i * kQKK + j] = x[i].d * x[i].qs[j];
  }
}

void QuantQ4_0(BlockQ4_0* y, const float* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const uint8_t q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const uint8_t q1 =
          std::min(15, static_cast<int>(static_cast<int8_t>(x[j + kQK / 2] * id + 8.5f)));
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void QuantQ4_1(BlockQ4_1* y, const float* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < kQK; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 15;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    y[i].m = F32ToF16(min);
    for (int j = 0; j < kQK / 2; ++j) {
      const uint8_t q0 =
          std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
      const uint8_t q1 =
          std::min(15, static_cast<int>(static_cast<int8_t>((x[j + kQK / 2] - min) * id + 0.5f)));
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void QuantQ5_0(BlockQ5_0* y, const float* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -16;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f)));
      const int q1 =
          std::min(31, static_cast<int>(static_cast<int8_t>(x[j + kQK / 2] * id + 16.5f)));
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= ((static_cast<uint32_t>(q0) & 0x10u) >> 4) << j;
      qh |= ((static_cast<uint32_t>(q1) & 0x10u) >> 4) << (j + kQK / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void QuantQ5_1(BlockQ5_1* y, const float* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < kQK; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 31;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    y[i].m = F32ToF16(min);
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const uint32_t q0 = static_cast<uint8_t>((x[j] - min) * id + 0.5f);
      const uint32_t q1 = static_cast<uint8_t>((x[j + kQK / 2] - min) * id + 0.5f);
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= ((q0 & 0x10u) >> 4) << j;
      qh |= ((q1 & 0x10u) >> 4) << (j + kQK / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void QuantQ8_0(BlockQ8_0* y, const float* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

void QuantQ8_1(BlockQ8_1* y, const float* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
      sum += y[i].qs[j];
    }
    y[i].s = F32ToF16(sum * d);
  }
}

void QuantQ8_K(BlockQ8_K* y, const float* x, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float max = 0, amax = 0;
    for (int j = 0; j < kQKK; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    if (!amax) {
      std::memset(&y[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    // -127 rather than -128 keeps every quant in [-127, 127] (as ggml).
    const float iscale = -127.f / max;
    for (int j = 0; j < kQKK; ++j) {
      y[i].qs[j] = static_cast<int8_t>(std::min(127, NearestInt(iscale * x[j])));
    }
    for (int j = 0; j < kQKK / 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y[i].qs[j * 16 + l];
      y[i].bsums[j] = static_cast<int16_t>(sum);
    }
    y[i].d = 1 / iscale;
  }
}

// ggml's make_qkx2_quants: weighted least-squares scale and min for a
// sub-block quantized to [0, nmax].
float MakeQkx2Quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                     float* the_min, uint8_t* laux, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(NearestInt(iscale * (x[i] - min)), 0, nmax);
    L[i] = static_cast<uint8_t>(l);
    const float diff = scale * L[i] + min - x[i];
    best_error += weights[i] * diff * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * (x[i] - min)), 0, nmax);
      laux[i] = static_cast<uint8_t>(l);
      sum_l += weights[i] * l;
      sum_l2 += weights[i] * l * l;
      sum_xl += weights[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * laux[i] + this_min - x[i];
        cur_error += weights[i] * diff * diff;
      }
      if (cur_error < best_error) {
        std::memcpy(L, laux, n);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// ggml's make_qx_quants with rmse_type 1 and no importance weights.
float MakeQxQuants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < 1e-15f) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        L[i] = static_cast<int8_t>(nmax + std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void QuantQ4_K(BlockQ4_K* y, const float* x, int64_t nb) {
  uint8_t L[kQKK], laux[32];
  float weights[32], mins[kQKK / 32], scales[kQKK / 32];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < kQKK / 32; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] =
          MakeQkx2Quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], laux, -1.f, 0.1f, 20);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    std::memset(y[i].scales, 0, sizeof(y[i].scales));
    for (int j = 0; j < kQKK / 32; ++j) {
      const uint8_t ls = static_cast<uint8_t>(std::min(63, NearestInt(inv_scale * scales[j])));
      const uint8_t lm = static_cast<uint8_t>(std::min(63, NearestInt(inv_min * mins[j])));
      if (j < 4) {
        y[i].scales[j] = ls;
        y[i].scales[j + 4] = lm;
      } else {
        y[i].scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
        y[i].scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
        y[i].scales[j - 0] |= static_cast<uint8_t>((lm >> 4) << 6);
      }
    }
    y[i].d = F32ToF16(max_scale / 63.f);
    y[i].dmin = F32ToF16(max_min / 63.f);
    // Requantize against the rounded scales.
    for (int j = 0; j < kQKK / 32; ++j) {
      uint8_t sc, m;
      GetScaleMinK4(j, y[i].scales, &sc, &m);
      const float d = F16ToF32(y[i].d) * sc;
      if (!d) continue;
      const float dm = F16ToF32(y[i].dmin) * m;
      for (int l = 0; l < 32; ++l) {
        L[32 * j + l] =
            static_cast<uint8_t>(std::clamp(NearestInt((x[32 * j + l] + dm) / d), 0, 15));
      }
    }
    uint8_t* q = y[i].qs;
    for (int j = 0; j < kQKK; j += 64, q += 32) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    }
  }
}

// Packs 8 sub-block scales and mins (6 bits each) as Q4_K and Q5_K store them.
void PackScalesK4(uint8_t* scales, const uint8_t* ls, const uint8_t* lm) {
  std::memset(scales, 0, kKScaleBytes);
  for (int j = 0; j < kQKK / 32; ++j) {
    if (j < 4) {
      scales[j] = ls[j];
      scales[j + 4] = lm[j];
    } else {
      scales[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      scales[j - 0] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}

void QuantQ5_K(BlockQ5_K* y, const float* x, int64_t nb) {
  uint8_t L[kQKK], laux[32];
  float weights[32], mins[kQKK / 32], scales[kQKK / 32];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < kQKK / 32; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] =
          MakeQkx2Quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], laux, -0.5f, 0.1f, 15);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t ls[kQKK / 32], lm[kQKK / 32];
    for (int j = 0; j < kQKK / 32; ++j) {
      ls[j] = static_cast<uint8_t>(std::min(63, NearestInt(inv_scale * scales[j])));
      lm[j] = static_cast<uint8_t>(std::min(63, NearestInt(inv_min * mins[j])));
    }
    PackScalesK4(y[i].scales, ls, lm);
    y[i].d = F32ToF16(max_scale / 63.f);
    y[i].dmin = F32ToF16(max_min / 63.f);
    // Requantize against the rounded scales.
    for (int j = 0; j < kQKK / 32; ++j) {
      uint8_t sc, m;
      GetScaleMinK4(j, y[i].scales, &sc, &m);
      const float d = F16ToF32(y[i].d) * sc;
      if (!d) continue;
      const float dm = F16ToF32(y[i].dmin) * m;
      for (int l = 0; l < 32; ++l) {
        L[32 * j + l] =
            static_cast<uint8_t>(std::clamp(NearestInt((x[32 * j + l] + dm) / d), 0, 31));
      }
    }
    uint8_t* qh = y[i].qh;
    uint8_t* ql = y[i].qs;
    std::memset(qh, 0, kQKK / 8);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < kQKK; n += 64, ql += 32) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[n + j];
        if (l1 > 15) {
          l1 -= 16;
          qh[j] |= m1;
        }
        int l2 = L[n + j + 32];
        if (l2 > 15) {
          l2 -= 16;
          qh[j] |= m2;
        }
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
      m1 <<= 2;
      m2 <<= 2;
    }
  }
}

void QuantQ6_K(BlockQ6_K* y, const float* x, int64_t nb) {
  int8_t L[kQKK];
  float scales[kQKK / 16];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      scales[ib] = MakeQxQuants(16, 32, x + 16 * ib, L + 16 * ib);
      if (std::fabs(scales[ib]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[ib]);
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < 1e-15f) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = F32ToF16(1 / iscale);
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      y[i].scales[ib] = static_cast<int8_t>(std::min(127, NearestInt(iscale * scales[ib])));
    }
    for (int j = 0; j < kQKK / 16; ++j) {
      const float d = F16ToF32(y[i].d) * y[i].scales[j];
      if (!d) continue;
      for (int l = 0; l < 16; ++l) {
        L[16 * j + l] =
            static_cast<int8_t>(std::clamp(NearestInt(x[16 * j + l] / d), -32, 31) + 32);
      }
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < kQKK; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = static_cast<uint8_t>(q1 | (q3 << 4));
        ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
        qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                     ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
      }
    }
  }
}

}  // namespace

void DequantizeRow(float* y, const void* x, DType t, int64_t n) {
  const int64_t nb = n / GetDType(t).block_size;
  switch (t) {
    case DType::kF32:
      std::memcpy(y, x, n * sizeof(float));
      break;
    case DType::kF16: {
      const uint8_t* p = static_cast<const uint8_t*>(x);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        y[i] = F16ToF32(h);
      }
      break;
    }
    case DType::kBF16: {
      const uint8_t* p = static_cast<const uint8_t*>(x);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        y[i] = BF16ToF32(h);
      }
      break;
    }
    case DType::kQ4_0:
      DequantQ4_0(y, static_cast<const BlockQ4_0*>(x), nb);
      break;
    case DType::kQ4_1:
      DequantQ4_1(y, static_cast<const BlockQ4_1*>(x), nb);
      break;
    case DType::kQ5_0:
      DequantQ5_0(y, static_cast<const BlockQ5_0*>(x), nb);
      break;
    case DType::kQ5_1:
      DequantQ5_1(y, static_cast<const BlockQ5_1*>(x), nb);
      break;
    case DType::kQ8_0:
      DequantQ8_0(y, static_cast<const BlockQ8_0*>(x), nb);
      break;
    case DType::kQ8_1:
      DequantQ8_1(y, static_cast<const BlockQ8_1*>(x), nb);
      break;
    case DType::kQ4_K:
      DequantQ4_K(y, static_cast<const BlockQ4_K*>(x), nb);
      break;
    case DType::kQ5_K:
      DequantQ5_K(y, static_cast<const BlockQ5_K*>(x), nb);
      break;
    case DType::kQ6_K:
      DequantQ6_K(y, static_cast<const BlockQ6_K*>(x), nb);
      break;
    case DType::kQ8_K:
      DequantQ8_K(y, static_cast<const BlockQ8_K*>(x), nb);
      break;
    default:
      break;  // unsupported: the caller checked FindDType(t)->matmul
  }
}

void QuantizeRow(void* y, const float* x, DType t, int64_t n) {
  const int64_t nb = n / GetDType(t).block_size;
  switch (t) {
    case DType::kF32:
      std::memcpy(y, x, n * sizeof(float));
      break;
    case DType::kF16: {
      uint8_t* p = static_cast<uint8_t*>(y);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = F32ToF16(x[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      break;
    }
    case DType::kBF16: {
      uint8_t* p = static_cast<uint8_t*>(y);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = F32ToBF16(x[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      break;
    }
    case DType::kQ4_0:
      QuantQ4_0(static_cast<BlockQ4_0*>(y), x, nb);
      break;
    case DType::kQ4_1:
      QuantQ4_1(static_cast<BlockQ4_1*>(y), x, nb);
      break;
    case DType::kQ5_0:
      QuantQ5_0(static_cast<BlockQ5_0*>(y), x, nb);
      break;
    case DType::kQ5_1:
      QuantQ5_1(static_cast<BlockQ5_1*>(y), x, nb);
      break;
    case DType::kQ8_0:
      QuantQ8_0(static_cast<BlockQ8_0*>(y), x, nb);
      break;
    case DType::kQ8_1:
      QuantQ8_1(static_cast<BlockQ8_1*>(y), x, nb);
      break;
    case DType::kQ4_K:
      QuantQ4_K(static_cast<BlockQ4_K*>(y), x, nb);
      break;
    case DType::kQ5_K:
      QuantQ5_K(static_cast<BlockQ5_K*>(y), x, nb);
      break;
    case DType::kQ6_K:
      QuantQ6_K(static_cast<BlockQ6_K*>(y), x, nb);
      break;
    case DType::kQ8_K:
      QuantQ8_K(static_cast<BlockQ8_K*>(y), x, nb);
      break;
    default:
      break;
  }
}

}  // namespace pdserve::kernels
