#include "kernels/cpu/matmul.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"

namespace pdserve::kernels {

ActFormat ActFormatFor(DType weight_type) {
  switch (weight_type) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return ActFormat::kQ8_1;
    case DType::kQ4_K:
    case DType::kQ6_K:
      return ActFormat::kQ8_K;
    default:
      return ActFormat::kF32;
  }
}

int64_t ActRowBytes(ActFormat f, int64_t n_in) {
  switch (f) {
    case ActFormat::kF32:
      return n_in * static_cast<int64_t>(sizeof(float));
    case ActFormat::kQ8_1:
      return n_in + n_in / kQK * 2 * static_cast<int64_t>(sizeof(float));
    case ActFormat::kQ8_K:
      return n_in / kQKK * static_cast<int64_t>(sizeof(BlockQ8_K));
  }
  return 0;
}

void QuantizeActivations(void* xq, ActFormat f, const float* x, int64_t n_in, int64_t n_rows,
                         int ith, int nth) {
  int64_t begin, end;
  SplitRange(n_rows, ith, nth, 1, &begin, &end);
  const int64_t row_bytes = ActRowBytes(f, n_in);
  uint8_t* out = static_cast<uint8_t*>(xq);  // (n_rows, row_bytes)
  const Isa isa = ActiveIsa();
  for (int64_t r = begin; r < end; ++r) {
    const float* row = x + r * n_in;  // (n_in)
    switch (f) {
      case ActFormat::kF32:
        std::memcpy(out + r * row_bytes, row, n_in * sizeof(float));
        break;
      case ActFormat::kQ8_1:
        if (isa == Isa::kAvx512) {
          internal::QuantizeRowQ8Avx512(out + r * row_bytes, row, n_in);
        } else if (isa == Isa::kAvx2) {
          internal::QuantizeRowQ8Avx2(out + r * row_bytes, row, n_in);
        } else {
          internal::QuantizeRowQ8Scalar(out + r * row_bytes, row, n_in);
        }
        break;
      case ActFormat::kQ8_K:
        QuantizeRow(out + r * row_bytes, row, DType::kQ8_K, n_in);
        break;
    }
  }
}

void MatMul(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t n_tokens, int ith,
            int nth) {
  // Rows split in multiples of 16 so threads never share an output cache line
  // and SIMD paths get whole row groups.
  int64_t r0, r1;
  SplitRange(w.n_out, ith, nth, 16, &r0, &r1);
  if (r0 >= r1) return;
  const int64_t act_row_bytes = ActRowBytes(ActFormatFor(w.type), w.n_in);
  switch (ActiveIsa()) {
    case Isa::kAvx512:
      internal::MatMulAvx512(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
      break;
    case Isa::kAvx2:
      internal::MatMulAvx2(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
      break;
    case Isa::kScalar:
      internal::MatMulScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
      break;
  }
}

void MatMulRef(float* y, int64_t ldy, const WeightMatrix& w, const float* x, int64_t n_tokens) {
  std::vector<float> row(w.n_in);
  for (int64_t r = 0; r < w.n_out; ++r) {
    DequantizeWeightRow(row.data(), w, r);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double acc = 0;
      for (int64_t k = 0; k < w.n_in; ++k) acc += static_cast<double>(row[k]) * x[t * w.n_in + k];
      y[t * ldy + r] = static_cast<float>(acc);
    }
  }
}

void MatMulQuantRef(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                    int64_t n_tokens) {
  const ActFormat f = ActFormatFor(w.type);
  const int64_t act_row_bytes = ActRowBytes(f, w.n_in);
  std::vector<float> wrow(w.n_in);
  std::vector<double> xrow(w.n_in);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const uint8_t* xt = static_cast<const uint8_t*>(xq) + t * act_row_bytes;
    if (f == ActFormat::kQ8_1) {
      const internal::ActQ8 a = internal::ActQ8View(xt, w.n_in);
      for (int64_t k = 0; k < w.n_in; ++k) xrow[k] = static_cast<double>(a.qs[k]) * a.d[k / kQK];
    } else {
      std::vector<float> tmp(w.n_in);
      if (f == ActFormat::kF32) {
        std::memcpy(tmp.data(), xt, w.n_in * sizeof(float));
      } else {
        DequantizeRow(tmp.data(), xt, DType::kQ8_K, w.n_in);
      }
      for (int64_t k = 0; k < w.n_in; ++k) xrow[k] = tmp[k];
    }
    for (int64_t r = 0; r < w.n_out; ++r) {
      DequantizeWeightRow(wrow.data(), w, r);
      double acc = 0;
      for (int64_t k = 0; k < w.n_in; ++k) acc += wrow[k] * xrow[k];
      y[t * ldy + r] = static_cast<float>(acc);
    }
  }
}

namespace internal {

void QuantizeRowQ8Scalar(void* y, const float* x, int64_t n_in) {
  int8_t* qs = static_cast<int8_t*>(y);  // (n_in)
  float d[kQKK / kQK];                   // staged: y's floats may be unaligned
  float sa[kQKK / kQK];
  const int64_t nb = n_in / kQK;
  for (int64_t b0 = 0; b0 < nb; b0 += kQKK / kQK) {
    const int64_t b1 = b0 + kQKK / kQK < nb ? b0 + kQKK / kQK : nb;
    for (int64_t b = b0; b < b1; ++b) {
      const float* xb = x + b * kQK;
      float amax = 0;
      for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
      const float db = amax / 127;
      const float id = db != 0 ? 1.0f / db : 0.0f;
      int sum = 0;
      for (int j = 0; j < kQK; ++j) {
        const int q = static_cast<int>(std::nearbyint(xb[j] * id));
        qs[b * kQK + j] = static_cast<int8_t>(q);
        sum += q;
      }
      d[b - b0] = db;
      sa[b - b0] = db * static_cast<float>(sum);
    }
    std::memcpy(qs + n_in + b0 * 4, d, (b1 - b0) * 4);
    std::memcpy(qs + n_in + nb * 4 + b0 * 4, sa, (b1 - b0) * 4);
  }
}

}  // namespace internal

}  // namespace pdserve::kernels
