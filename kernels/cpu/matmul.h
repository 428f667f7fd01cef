// Weight-times-activation products: y = x · Wᵀ for a batch of token rows.
// Two phases so one quantized input feeds several weights (Q, K and V;
// gate and up): QuantizeActivations, a barrier, then MatMul per weight.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace pdserve::kernels {

// How activations are encoded for a weight type's dot product.
enum class ActFormat {
  kF32,   // plain float rows (F32, F16 and BF16 weights)
  kQ8_1,  // BlockQ8_1 per 32 elements (Q4_0, Q4_1, Q8_0 weights)
  kQ8_K,  // BlockQ8_K per 256 elements (Q4_K, Q6_K weights)
};

ActFormat ActFormatFor(DType weight_type);
// Bytes of one encoded activation row of n_in elements.
int64_t ActRowBytes(ActFormat f, int64_t n_in);

// A weight matrix of n_out rows by n_in columns, row-major, each row
// RowBytes(type, n_in) bytes. Points into the mmapped model file.
struct WeightMatrix {
  const void* data = nullptr;  // (n_out, n_in) in `type`
  DType type = DType::kF32;
  int64_t n_out = 0;
  int64_t n_in = 0;
};

// Encodes rows [0, n_rows) of x (n_rows, n_in) into xq (n_rows, ActRowBytes)
// Thread ith of nth encodes its share of rows. For kF32 this is a copy.
void QuantizeActivations(void* xq, ActFormat f, const float* x, int64_t n_in, int64_t n_rows,
                         int ith, int nth);

// y[t * ldy + r] = Σ_k W[r][k] · x[t][k] for t < n_tokens and the output rows
// r that belong to thread ith of nth. xq holds the activations encoded in
// ActFormatFor(w.type).
void MatMul(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t n_tokens, int ith,
            int nth);

// Naive reference: dequantizes each weight row to float and accumulates in
// double against the float activations. For tests.
void MatMulRef(float* y, int64_t ldy, const WeightMatrix& w, const float* x, int64_t n_tokens);

// Reference on the encoded activations xq (n_tokens, ActRowBytes): dequantizes
// weights and activations and accumulates in double, using the stored block
// sum s of BlockQ8_1 for the Q4_0/Q4_1 offset terms exactly as MatMul does.
// MatMul differs from it only by float rounding. For tests.
void MatMulQuantRef(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t n_tokens);

}  // namespace pdserve::kernels
