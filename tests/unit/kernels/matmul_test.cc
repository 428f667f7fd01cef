#include "kernels/cpu/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"
#include "tests/unit/kernels/test_util.h"

namespace pdserve::kernels {
namespace {

using testing::MaxRelErr;
using testing::Nmse;
using testing::RandomVector;
using testing::ScopedIsa;

struct Shape {
  int64_t n_out, n_in, n_tokens;
};

// A weight matrix quantized from Gaussian floats, owning its bytes.
struct TestWeights {
  std::vector<uint8_t> bytes;
  WeightMatrix w;
  TestWeights(DType type, int64_t n_out, int64_t n_in, uint32_t seed) {
    const std::vector<float> f = RandomVector(n_out * n_in, seed, 0.05f);
    const int64_t row_bytes = RowBytes(type, n_in);
    bytes.resize(n_out * row_bytes + 64);
    for (int64_t r = 0; r < n_out; ++r) {
      QuantizeRow(bytes.data() + r * row_bytes, f.data() + r * n_in, type, n_in);
    }
    w = {bytes.data(), type, n_out, n_in};
  }
};

// Tolerances. Against MatMulQuantRef (same encoded activations, double
// accumulation) only float rounding differs: max error ≤ 2e-5 of max |y|.
// Against MatMulRef (float activations) int8 activation quantization adds
// error: NMSE ≤ 1e-3 for Q8_1/Q8_K activations, 1e-10 for float ones.
constexpr double kQuantRefMaxRel = 2e-5;
double FloatRefNmse(DType t) { return ActFormatFor(t) == ActFormat::kF32 ? 1e-10 : 1e-3; }

void CheckMatMul(DType type, Shape s, Isa isa, int nth) {
  SCOPED_TRACE(std::string(GetDType(type).name) + " " + IsaName(isa) +
               " n_out=" + std::to_string(s.n_out) + " n_in=" + std::to_string(s.n_in) +
               " n_tokens=" + std::to_string(s.n_tokens) + " nth=" + std::to_string(nth));
  ScopedIsa scoped(isa);
  TestWeights tw(type, s.n_out, s.n_in, 1234 + static_cast<uint32_t>(s.n_out));
  const std::vector<float> x = RandomVector(s.n_tokens * s.n_in, 99);
  const ActFormat f = ActFormatFor(type);
  std::vector<uint8_t> xq(ActRowBytes(f, s.n_in) * s.n_tokens);
  for (int ith = 0; ith < nth; ++ith) {
    QuantizeActivations(xq.data(), f, x.data(), s.n_in, s.n_tokens, ith, nth);
  }
  // Output rows strided wider than n_out to check ldy.
  const int64_t ldy = s.n_out + 3;
  std::vector<float> y(s.n_tokens * ldy, -7.0f), yq(s.n_tokens * ldy), yf(s.n_tokens * ldy);
  for (int ith = 0; ith < nth; ++ith) MatMul(y.data(), ldy, tw.w, xq.data(), s.n_tokens, ith, nth);
  MatMulQuantRef(yq.data(), ldy, tw.w, xq.data(), s.n_tokens);
  MatMulRef(yf.data(), ldy, tw.w, x.data(), s.n_tokens);
  for (int64_t t = 0; t < s.n_tokens; ++t) {
    for (int64_t r = s.n_out; r < ldy; ++r) {
      ASSERT_EQ(y[t * ldy + r], -7.0f) << "wrote past n_out";
      y[t * ldy + r] = yq[t * ldy + r] = yf[t * ldy + r] = 0;
    }
  }
  EXPECT_LT(MaxRelErr(y.data(), yq.data(), y.size()), kQuantRefMaxRel);
  EXPECT_LT(Nmse(y.data(), yf.data(), y.size()), FloatRefNmse(type));
}

bool IsKQuant(DType t) { return t == DType::kQ4_K || t == DType::kQ6_K; }

class MatMulTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatMulTest, MatchesReferencesOnEveryIsaAndShapeClass) {
  const DType type = GetParam();
  // n_in: 576 is a multiple of 32 but not of 256 (the model's width).
  const int64_t n_in = IsKQuant(type) ? 512 : 576;
  for (Isa isa : testing::SupportedIsas()) {
    for (int64_t n_tokens : {1, 2, 5, 8, 32}) {
      CheckMatMul(type, {37, n_in, n_tokens}, isa, 1);
    }
    CheckMatMul(type, {67, n_in, 4}, isa, 2);
    CheckMatMul(type, {1, n_in, 3}, isa, 2);  // fewer rows than threads
    CheckMatMul(type, {130, IsKQuant(type) ? 256 : 64, 7}, isa, 3);
  }
}

TEST_P(MatMulTest, PrefillShapeMatchesReference) {
  const DType type = GetParam();
  for (Isa isa : testing::SupportedIsas()) {
    CheckMatMul(type, {45, IsKQuant(type) ? 256 : 96, 512}, isa, 2);
  }
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, MatMulTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kQ4_0, DType::kQ4_1,
                                           DType::kQ8_0, DType::kQ4_K, DType::kQ6_K),
                         [](const auto& info) { return std::string(GetDType(info.param).name); });

TEST(MatMulApiTest, ActFormats) {
  EXPECT_EQ(ActFormatFor(DType::kQ4_1), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ8_0), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ4_0), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ4_K), ActFormat::kQ8_K);
  EXPECT_EQ(ActFormatFor(DType::kQ6_K), ActFormat::kQ8_K);
  EXPECT_EQ(ActFormatFor(DType::kF16), ActFormat::kF32);
  EXPECT_EQ(ActFormatFor(DType::kF32), ActFormat::kF32);
  EXPECT_EQ(ActRowBytes(ActFormat::kQ8_1, 576), 18 * 36);
  EXPECT_EQ(ActRowBytes(ActFormat::kQ8_K, 512), 2 * 292);
  EXPECT_EQ(ActRowBytes(ActFormat::kF32, 576), 576 * 4);
}

TEST(MatMulApiTest, QuantizedActivationsMatchReferenceQuantizer) {
  const int64_t n_in = 576, n_rows = 5;
  const std::vector<float> x = RandomVector(n_in * n_rows, 8, 3.0f);
  const int64_t rb = ActRowBytes(ActFormat::kQ8_1, n_in);
  std::vector<uint8_t> ref(rb * n_rows);
  for (int64_t r = 0; r < n_rows; ++r) {
    QuantizeRow(ref.data() + r * rb, x.data() + r * n_in, DType::kQ8_1, n_in);
  }
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    std::vector<uint8_t> xq(rb * n_rows);
    QuantizeActivations(xq.data(), ActFormat::kQ8_1, x.data(), n_in, n_rows, 0, 1);
    // Quants may differ by one where x·id lands on a rounding tie in a
    // different float order; scales and sums must agree to f16 rounding.
    const BlockQ8_1* a = reinterpret_cast<const BlockQ8_1*>(xq.data());
    const BlockQ8_1* b = reinterpret_cast<const BlockQ8_1*>(ref.data());
    for (int64_t i = 0; i < n_rows * n_in / kQK; ++i) {
      ASSERT_EQ(a[i].d, b[i].d);
      for (int j = 0; j < kQK; ++j) ASSERT_NEAR(a[i].qs[j], b[i].qs[j], 1);
      ASSERT_NEAR(F16ToF32(a[i].s), F16ToF32(b[i].s), 1e-2 + 1e-3 * std::fabs(F16ToF32(b[i].s)));
    }
  }
}

TEST(MatMulApiTest, RunsInsideThreadPool) {
  ThreadPool pool(2);
  TestWeights tw(DType::kQ4_1, 100, 576, 5);
  const std::vector<float> x = RandomVector(3 * 576, 6);
  std::vector<uint8_t> xq(ActRowBytes(ActFormat::kQ8_1, 576) * 3);
  std::vector<float> y(3 * 100), yq(3 * 100);
  pool.Run([&](int ith, int nth) {
    QuantizeActivations(xq.data(), ActFormat::kQ8_1, x.data(), 576, 3, ith, nth);
    pool.Barrier();
    MatMul(y.data(), 100, tw.w, xq.data(), 3, ith, nth);
  });
  MatMulQuantRef(yq.data(), 100, tw.w, xq.data(), 3);
  EXPECT_LT(MaxRelErr(y.data(), yq.data(), y.size()), kQuantRefMaxRel);
}

}  // namespace
}  // namespace pdserve::kernels
