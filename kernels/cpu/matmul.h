// Weight-times-activation products: y = x · Wᵀ for a batch of token rows.
// Two phases so one quantized input feeds several weights (Q, K and V;
// gate and up): QuantizeActivations, a barrier, then MatMul per weight.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace pdserve::kernels {

// How activations are encoded for a weight type's dot product.
enum class ActFormat {
  kF32,  // plain float rows (F32, F16 and BF16 weights)
  // Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights: ggml's Q8_1 content (int8 quants per block of
  // 32, a scale d and the block sum d·Σq), laid out for SIMD: a row is
  // [n_in int8 quants][n_in/32 float d][n_in/32 float d·Σq], the sum in float
  // rather than BlockQ8_1's f16.
  kQ8_1,
  kQ8_K,  // BlockQ8_K per 256 elements (Q4_K, Q5_K, Q6_K weights)
};

ActFormat ActFormatFor(DType weight_type);
// Bytes of one encoded activation row of n_in elements.
int64_t ActRowBytes(ActFormat f, int64_t n_in);

enum class WeightLayout {
  kGgml,    // row-major ggml rows, as in the GGUF file
  kPacked,  // PackWeights' interleaved layout (see PackWeights)
};

// A weight matrix of n_out rows by n_in columns. kGgml: row-major, each row
// RowBytes(type, n_in) bytes, typically pointing into the mmapped model file.
struct WeightMatrix {
  const void* data = nullptr;  // (n_out, n_in) in `type`, arranged per `layout`
  DType type = DType::kF32;
  int64_t n_out = 0;
  int64_t n_in = 0;
  WeightLayout layout = WeightLayout::kGgml;
};

// Load-time repacking for faster matmuls (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): groups of 16
// rows whose blocks sit side by side so one 64-byte load feeds 16 output rows
// of an integer dot product. Same bytes as the ggml rows plus padding of the
// last group to 16 rows. Q4_K, Q5_K, Q6_K (n_in a multiple of 256): groups
// of 8 rows, sub-block scales pre-decoded to bytes (Q4_K/Q5_K rows +4 bytes
// per super-block, 2.8% / 2.3%), so the decode GEMV is one 32-byte load per
// 8 rows x 4 elements and no per-row horizontal sums. MatMul accepts both layouts, but ggml rows
// get repacked on the fly at every call: pack each matrix once at load (decode matmuls measured
// ~1.5x faster packed). Memory: one more copy of those weights (92 MiB for SmolLM2-135M); the
// file's pages then go cold, except token_embd rows read for embedding lookups (or use
// DequantizeWeightRow on the packed tied output). Returns 0 when w cannot be packed (other types,
// or w already packed); then use w as it is.
int64_t PackedWeightBytes(const WeightMatrix& w);
// Writes the packed form of w (kGgml) into dst (PackedWeightBytes(w) bytes,
// 64-byte aligned preferred) and returns the matrix to pass to MatMul. Rows
// are split across thread ith of nth (call with 0, 1 to do all).
WeightMatrix PackWeights(void* dst, const WeightMatrix& w, int ith, int nth);
// Dequantizes row `row` of w (either layout) into y (n_in floats), e.g. for
// embedding lookups from a packed tied output matrix.
void DequantizeWeightRow(float* y, const WeightMatrix& w, int64_t row);

// Encodes rows [0, n_rows) of x (n_rows, n_in) into xq (n_rows, ActRowBytes).
// Thread ith of nth encodes its share of rows. For kF32 this is a copy.
void QuantizeActivations(void* xq, ActFormat f, const float* x, int64_t n_in, int64_t n_rows,
                         int ith, int nth);

// Fused row ops that end in an encoded activation row xq (ActRowBytes(f, n)),
// saving a pass over the row; same bytes as the op then QuantizeActivations.
// n is a multiple of the format's block (32, or 256 for kQ8_K).
//   RmsNormQuantize: encode(RmsNorm(x, w, eps)).
//   SwiGluQuantize:  encode(silu(gate) * up), e.g. the down projection's input.
void RmsNormQuantize(void* xq, ActFormat f, const float* x, const float* w, int64_t n, float eps);
void SwiGluQuantize(void* xq, ActFormat f, const float* gate, const float* up, int64_t n);

// y[t * ldy + r] = Σ_k W[r][k] · x[t][k] for t < n_tokens and the output rows
// r that belong to thread ith of nth (SplitRange(n_out, ith, nth, 16)). xq
// holds the activations encoded in ActFormatFor(w.type), 4-byte aligned or
// better. Batches are tiled: packed 32-block types 16 rows x 8 tokens
// (AVX-512) or 8 x 4 (AVX2), K-quants packed 16 rows x 8 tokens (AVX-512) or
// 8 x 4 (AVX2), ggml rows
// 1 row x 4 tokens inside groups of 16 rows, float types 4 rows x 2 tokens inside groups of 64
// rows; so weights stream from memory once per call whatever n_tokens is.
void MatMul(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t n_tokens, int ith,
            int nth);

// Naive reference: dequantizes each weight row to float and accumulates in
// double against the float activations. For tests.
void MatMulRef(float* y, int64_t ldy, const WeightMatrix& w, const float* x, int64_t n_tokens);

// Reference on the encoded activations xq (n_tokens, ActRowBytes): dequantizes
// weights (either layout) and activations and accumulates in double. MatMul
// differs from it only by float rounding. For tests.
void MatMulQuantRef(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t n_tokens);

}  // namespace pdserve::kernels
