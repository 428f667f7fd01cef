#include "kernels/cpu/matmul.h"

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
      return n_in / kQK * static_cast<int64_t>(sizeof(BlockQ8_1));
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
          internal::QuantizeRowQ8_1Avx512(out + r * row_bytes, row, n_in);
        } else if (isa == Isa::kAvx2) {
          internal::QuantizeRowQ8_1Avx2(out + r * row_bytes, row, n_in);
        } else {
          QuantizeRow(out + r * row_bytes, row, DType::kQ8_1, n_in);
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
  const int64_t row_bytes = RowBytes(w.type, w.n_in);
  for (int64_t r = 0; r < w.n_out; ++r) {
    DequantizeRow(row.data(), static_cast<const uint8_t*>(w.data) + r * row_bytes, w.type, w.n_in);
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
  const int64_t row_bytes = RowBytes(w.type, w.n_in);
  std::vector<float> wrow(w.n_in), xrow(w.n_in);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const uint8_t* xt = static_cast<const uint8_t*>(xq) + t * act_row_bytes;
    switch (f) {
      case ActFormat::kF32:
        std::memcpy(xrow.data(), xt, w.n_in * sizeof(float));
        break;
      case ActFormat::kQ8_1:
        DequantizeRow(xrow.data(), xt, DType::kQ8_1, w.n_in);
        break;
      case ActFormat::kQ8_K:
        DequantizeRow(xrow.data(), xt, DType::kQ8_K, w.n_in);
        break;
    }
    for (int64_t r = 0; r < w.n_out; ++r) {
      const uint8_t* wr = static_cast<const uint8_t*>(w.data) + r * row_bytes;
      double acc = 0;
      if (w.type == DType::kQ4_0 || w.type == DType::kQ4_1) {
        // The offset term uses the block sum s as stored, like the kernels do.
        const BlockQ8_1* xb = reinterpret_cast<const BlockQ8_1*>(xt);
        for (int64_t b = 0; b < w.n_in / kQK; ++b) {
          double dot = 0;
          for (int j = 0; j < kQK / 2; ++j) {
            const uint8_t q =
                wr[b * GetDType(w.type).type_size + (w.type == DType::kQ4_0 ? 2 : 4) + j];
            dot += (q & 0xF) * static_cast<double>(xrow[b * kQK + j]) +
                   (q >> 4) * static_cast<double>(xrow[b * kQK + j + kQK / 2]);
          }
          uint16_t dh, mh;
          std::memcpy(&dh, wr + b * GetDType(w.type).type_size, 2);
          const double s = F16ToF32(xb[b].s);
          if (w.type == DType::kQ4_0) {
            acc += F16ToF32(dh) * (dot - 8 * s);
          } else {
            std::memcpy(&mh, wr + b * GetDType(w.type).type_size + 2, 2);
            acc += F16ToF32(dh) * dot + F16ToF32(mh) * s;
          }
        }
      } else {
        DequantizeRow(wrow.data(), wr, w.type, w.n_in);
        for (int64_t k = 0; k < w.n_in; ++k) acc += static_cast<double>(wrow[k]) * xrow[k];
      }
      y[t * ldy + r] = static_cast<float>(acc);
    }
  }
}

}  // namespace pdserve::kernels
