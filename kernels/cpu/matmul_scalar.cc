// Portable matmul: one dot product per (output row, token), integer sums per
// block, any CPU. Also the fallback for weight types without a SIMD path.
#include <cstring>
#include <type_traits>

#include "kernels/cpu/matmul_internal.h"
#include "kernels/quant.h"

namespace pdserve::kernels::internal {
namespace {

float DotF32(const void* w, const void* x, int64_t n) {
  const float* wf = static_cast<const float*>(w);  // (n)
  const float* xf = static_cast<const float*>(x);  // (n)
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += wf[k + j] * xf[k + j];
  }
  for (; k < n; ++k) acc[0] += wf[k] * xf[k];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float DotF16(const void* w, const void* x, int64_t n) {
  const uint8_t* wh = static_cast<const uint8_t*>(w);  // (n) f16
  const float* xf = static_cast<const float*>(x);      // (n)
  float acc[4] = {};
  for (int64_t k = 0; k < n; ++k) {
    uint16_t h;
    std::memcpy(&h, wh + 2 * k, 2);
    acc[k & 3] += F16ToF32(h) * xf[k];
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

float DotBF16(const void* w, const void* x, int64_t n) {
  const uint8_t* wh = static_cast<const uint8_t*>(w);  // (n) bf16
  const float* xf = static_cast<const float*>(x);      // (n)
  float acc[4] = {};
  for (int64_t k = 0; k < n; ++k) acc[k & 3] += BF16ToF32(LoadU16(wh + 2 * k)) * xf[k];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Q4_0/Q4_1/Q8_0 against an ActQ8 row: per block d_w·d_a·Σ(q·a) plus the
// offset term (Q4_0: -8·d_w, Q4_1: m) times the activation block sum.
float DotQ4_0(const void* w, const void* x, int64_t n) {
  const BlockQ4_0* wb = static_cast<const BlockQ4_0*>(w);
  const ActQ8 a = ActQ8View(x, n);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    const int8_t* qa = a.qs + i * kQK;
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += (wb[i].qs[j] & 0xF) * qa[j] + (wb[i].qs[j] >> 4) * qa[j + kQK / 2];
    }
    const float dw = F16ToF32(wb[i].d);
    sum += dw * a.d[i] * static_cast<float>(isum) - 8 * dw * a.sa[i];
  }
  return sum;
}

float DotQ4_1(const void* w, const void* x, int64_t n) {
  const BlockQ4_1* wb = static_cast<const BlockQ4_1*>(w);
  const ActQ8 a = ActQ8View(x, n);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    const int8_t* qa = a.qs + i * kQK;
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += (wb[i].qs[j] & 0xF) * qa[j] + (wb[i].qs[j] >> 4) * qa[j + kQK / 2];
    }
    sum += F16ToF32(wb[i].d) * a.d[i] * static_cast<float>(isum) + F16ToF32(wb[i].m) * a.sa[i];
  }
  return sum;
}

// Q5_0/Q5_1: Q4's math on 5-bit quants, offset -16·d_w (Q5_0) or m (Q5_1).
template <typename Block>
float DotQ5(const void* w, const void* x, int64_t n) {
  const Block* wb = static_cast<const Block*>(w);
  const ActQ8 a = ActQ8View(x, n);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    const int8_t* qa = a.qs + i * kQK;
    const uint32_t qh = LoadU32(wb[i].qh);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = (wb[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
      const int q1 = (wb[i].qs[j] >> 4) | (((qh >> (j + kQK / 2)) & 1) << 4);
      isum += q0 * qa[j] + q1 * qa[j + kQK / 2];
    }
    const float dw = F16ToF32(wb[i].d);
    float off;
    if constexpr (std::is_same_v<Block, BlockQ5_1>) {
      off = F16ToF32(wb[i].m);
    } else {
      off = -16 * dw;
    }
    sum += dw * a.d[i] * static_cast<float>(isum) + off * a.sa[i];
  }
  return sum;
}

float DotQ8_0(const void* w, const void* x, int64_t n) {
  const BlockQ8_0* wb = static_cast<const BlockQ8_0*>(w);
  const ActQ8 a = ActQ8View(x, n);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    const int8_t* qa = a.qs + i * kQK;
    int isum = 0;
    for (int j = 0; j < kQK; ++j) isum += wb[i].qs[j] * qa[j];
    sum += F16ToF32(wb[i].d) * a.d[i] * static_cast<float>(isum);
  }
  return sum;
}

float DotQ4_K(const void* w, const void* x, int64_t n) {
  const BlockQ4_K* wb = static_cast<const BlockQ4_K*>(w);
  const BlockQ8_K* xb = static_cast<const BlockQ8_K*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const uint8_t* q = wb[i].qs;
    const int8_t* a = xb[i].qs;
    int sc_sum = 0, min_sum = 0;
    for (int j = 0; j < kQKK / 64; ++j) {
      uint8_t sc0, m0, sc1, m1;
      GetScaleMinK4(2 * j, wb[i].scales, &sc0, &m0);
      GetScaleMinK4(2 * j + 1, wb[i].scales, &sc1, &m1);
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += (q[l] & 0xF) * a[l];
        s1 += (q[l] >> 4) * a[l + 32];
      }
      sc_sum += sc0 * s0 + sc1 * s1;
      min_sum += m0 * (xb[i].bsums[4 * j] + xb[i].bsums[4 * j + 1]) +
                 m1 * (xb[i].bsums[4 * j + 2] + xb[i].bsums[4 * j + 3]);
      q += 32;
      a += 64;
    }
    sum += xb[i].d * (F16ToF32(wb[i].d) * sc_sum - F16ToF32(wb[i].dmin) * min_sum);
  }
  return sum;
}

float DotQ5_K(const void* w, const void* x, int64_t n) {
  const BlockQ5_K* wb = static_cast<const BlockQ5_K*>(w);
  const BlockQ8_K* xb = static_cast<const BlockQ8_K*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const uint8_t* q = wb[i].qs;
    const uint8_t* qh = wb[i].qh;
    const int8_t* a = xb[i].qs;
    int sc_sum = 0, min_sum = 0;
    for (int j = 0; j < kQKK / 64; ++j) {
      uint8_t sc0, m0, sc1, m1;
      GetScaleMinK4(2 * j, wb[i].scales, &sc0, &m0);
      GetScaleMinK4(2 * j + 1, wb[i].scales, &sc1, &m1);
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += ((q[l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4)) * a[l];
        s1 += ((q[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4)) * a[l + 32];
      }
      sc_sum += sc0 * s0 + sc1 * s1;
      min_sum += m0 * (xb[i].bsums[4 * j] + xb[i].bsums[4 * j + 1]) +
                 m1 * (xb[i].bsums[4 * j + 2] + xb[i].bsums[4 * j + 3]);
      q += 32;
      a += 64;
    }
    sum += xb[i].d * (F16ToF32(wb[i].d) * sc_sum - F16ToF32(wb[i].dmin) * min_sum);
  }
  return sum;
}

float DotQ6_K(const void* w, const void* x, int64_t n) {
  const BlockQ6_K* wb = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* xb = static_cast<const BlockQ8_K*>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const uint8_t* ql = wb[i].ql;
    const uint8_t* qh = wb[i].qh;
    const int8_t* sc = wb[i].scales;
    const int8_t* a = xb[i].qs;
    int isum = 0;
    for (int half = 0; half < 2; ++half) {
      int s[8] = {};  // per 16-group sums: group g = l/16 + 2 * quarter
      for (int l = 0; l < 32; ++l) {
        const int g = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        s[g + 0] += q1 * a[l];
        s[g + 2] += q2 * a[l + 32];
        s[g + 4] += q3 * a[l + 64];
        s[g + 6] += q4 * a[l + 96];
      }
      for (int g = 0; g < 8; ++g) isum += sc[g] * s[g];
      ql += 64;
      qh += 32;
      sc += 8;
      a += 128;
    }
    sum += xb[i].d * F16ToF32(wb[i].d) * isum;
  }
  return sum;
}

using DotFn = float (*)(const void* w, const void* x, int64_t n);

DotFn DotFor(DType t) {
  switch (t) {
    case DType::kF32:
      return DotF32;
    case DType::kF16:
      return DotF16;
    case DType::kBF16:
      return DotBF16;
    case DType::kQ4_0:
      return DotQ4_0;
    case DType::kQ4_1:
      return DotQ4_1;
    case DType::kQ5_0:
      return DotQ5<BlockQ5_0>;
    case DType::kQ5_1:
      return DotQ5<BlockQ5_1>;
    case DType::kQ8_0:
      return DotQ8_0;
    case DType::kQ4_K:
      return DotQ4_K;
    case DType::kQ5_K:
      return DotQ5_K;
    case DType::kQ6_K:
      return DotQ6_K;
    default:
      return nullptr;
  }
}

// Packed 16-row groups: the same math as the Dot* functions, reading each
// row's quants from its lane of the group.
void MatMulPackedScalar(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                        int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  const int64_t nb = w.n_in / kQK;
  const int64_t pb = PackedBlockBytes(w.type);
  const int n_chunks = w.type == DType::kQ8_0 ? 8 : 4;
  const int scale_off = PackedQuantBytes(w.type);
  const bool q5 = IsQ5(w.type);
  for (int64_t g = r0 / kPackRows; g * kPackRows < r1; ++g) {
    const uint8_t* wg = static_cast<const uint8_t*>(w.data) + g * nb * pb;  // (nb, pb)
    const int rows =
        static_cast<int>(r1 - g * kPackRows < kPackRows ? r1 - g * kPackRows : kPackRows);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const ActQ8 a = ActQ8View(static_cast<const uint8_t*>(xq) + t * act_row_bytes, w.n_in);
      for (int i = 0; i < rows; ++i) {
        float sum = 0;
        for (int64_t b = 0; b < nb; ++b) {
          const uint8_t* p = wg + b * pb;
          const int8_t* qa = a.qs + b * kQK;
          int isum = 0;
          for (int c = 0; c < n_chunks; ++c) {
            for (int j = 0; j < 4; ++j) {
              const uint8_t q = p[c * 64 + i * 4 + j];
              if (w.type == DType::kQ8_0) {
                isum += q * qa[4 * c + j];
              } else {
                const int h = q5 ? p[256 + i * 4 + j] : 0;
                const int lo = (q & 0xF) | (((h >> c) & 1) << 4);
                const int hi = (q >> 4) | (((h >> (4 + c)) & 1) << 4);
                isum += lo * qa[4 * c + j] + hi * qa[16 + 4 * c + j];
              }
            }
          }
          const float dw = F16ToF32(LoadU16(p + scale_off + 2 * i));
          const float off = HasMin(w.type)           ? F16ToF32(LoadU16(p + scale_off + 32 + 2 * i))
                            : w.type == DType::kQ4_0 ? -8 * dw
                            : w.type == DType::kQ5_0 ? -16 * dw
                                                     : -128 * dw;
          sum += dw * a.d[b] * static_cast<float>(isum) + off * a.sa[b];
        }
        y[t * ldy + g * kPackRows + i] = sum;
      }
    }
  }
}

}  // namespace

void MatMulScalar(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                  int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  if (w.layout == WeightLayout::kPacked && KLayout(w.type).bytes > 0) {
    MatMulPackedKScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    return;
  }
  if (w.layout == WeightLayout::kPacked) {
    MatMulPackedScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
    return;
  }
  const DotFn dot = DotFor(w.type);
  if (dot == nullptr) return;
  const int64_t row_bytes = RowBytes(w.type, w.n_in);
  const uint8_t* wp = static_cast<const uint8_t*>(w.data);  // (n_out, row_bytes)
  const uint8_t* xp = static_cast<const uint8_t*>(xq);      // (n_tokens, act_row_bytes)
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      y[t * ldy + r] = dot(wp + r * row_bytes, xp + t * act_row_bytes, w.n_in);
    }
  }
}

}  // namespace pdserve::kernels::internal
