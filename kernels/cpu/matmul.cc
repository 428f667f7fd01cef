#include "kernels/cpu/matmul.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"

namespace pdserve::kernels {
namespace internal {
float RmsNormScale(const float* x, int64_t n, float eps);  // ops.cc
}  // namespace internal

ActFormat ActFormatFor(DType weight_type) {
  switch (weight_type) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ8_0:
      return ActFormat::kQ8_1;
    case DType::kQ4_K:
    case DType::kQ5_K:
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
  for (int64_t r = begin; r < end; ++r) {
    const float* row = x + r * n_in;  // (n_in)
    switch (f) {
      case ActFormat::kF32:
        std::memcpy(out + r * row_bytes, row, n_in * sizeof(float));
        break;
      case ActFormat::kQ8_1:
        internal::QuantizeRowQ8(out + r * row_bytes, row, n_in, 0, n_in / kQK);
        break;
      case ActFormat::kQ8_K:
        internal::QuantizeRowQ8K(out + r * row_bytes, row, n_in);
        break;
    }
  }
}

namespace {

// Runs produce(chunk, k0, len) over [0, n) in stack chunks of 256 floats and
// encodes each chunk into the row xq.
template <typename Produce>
void EncodeChunked(void* xq, ActFormat f, int64_t n, Produce produce) {
  constexpr int64_t kChunk = kQKK;
  alignas(64) float chunk[kChunk];
  uint8_t* out = static_cast<uint8_t*>(xq);
  for (int64_t k0 = 0; k0 < n; k0 += kChunk) {
    const int64_t len = n - k0 < kChunk ? n - k0 : kChunk;
    produce(chunk, k0, len);
    switch (f) {
      case ActFormat::kF32:
        std::memcpy(out + k0 * sizeof(float), chunk, len * sizeof(float));
        break;
      case ActFormat::kQ8_1:
        internal::QuantizeRowQ8(xq, chunk, n, k0 / kQK, (k0 + len) / kQK);
        break;
      case ActFormat::kQ8_K:
        internal::QuantizeRowQ8K(out + k0 / kQKK * sizeof(BlockQ8_K), chunk, len);
        break;
    }
  }
}

}  // namespace

void RmsNormQuantize(void* xq, ActFormat f, const float* x, const float* w, int64_t n, float eps) {
  const float scale = internal::RmsNormScale(x, n, eps);
  EncodeChunked(xq, f, n, [&](float* chunk, int64_t k0, int64_t len) {
    for (int64_t i = 0; i < len; ++i) chunk[i] = x[k0 + i] * scale * w[k0 + i];
  });
}

void SwiGluQuantize(void* xq, ActFormat f, const float* gate, const float* up, int64_t n) {
  EncodeChunked(xq, f, n, [&](float* chunk, int64_t k0, int64_t len) {
    SwiGlu(chunk, gate + k0, up + k0, len);
  });
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

void QuantizeRowQ8Scalar(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1) {
  int8_t* qs = static_cast<int8_t*>(y);  // (n_in)
  uint8_t* dp = reinterpret_cast<uint8_t*>(qs + n_in);
  const int64_t nb = n_in / kQK;
  for (int64_t b = b0; b < b1; ++b) {
    const float* xb = x + (b - b0) * kQK;
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = static_cast<int>(std::nearbyint(xb[j] * id));
      qs[b * kQK + j] = static_cast<int8_t>(q);
      sum += q;
    }
    const float sa = d * static_cast<float>(sum);
    std::memcpy(dp + 4 * b, &d, 4);  // y's floats need not be aligned
    std::memcpy(dp + 4 * (nb + b), &sa, 4);
  }
}

void QuantizeRowQ8(void* y, const float* x, int64_t n_in, int64_t b0, int64_t b1) {
  switch (ActiveIsa()) {
    case Isa::kAvx512:
      return QuantizeRowQ8Avx512(y, x, n_in, b0, b1);
    case Isa::kAvx2:
      return QuantizeRowQ8Avx2(y, x, n_in, b0, b1);
    case Isa::kScalar:
      return QuantizeRowQ8Scalar(y, x, n_in, b0, b1);
  }
}

void QuantizeRowQ8K(void* y, const float* x, int64_t n) {
  if (ActiveIsa() == Isa::kAvx512) {
    return QuantizeRowQ8KAvx512(static_cast<BlockQ8_K*>(y), x, n / kQKK);
  }
  QuantizeRow(y, x, DType::kQ8_K, n);
}

}  // namespace internal

}  // namespace pdserve::kernels
