#include "kernels/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/cpu/isa.h"
#include "tests/unit/kernels/test_util.h"

namespace pdserve::kernels {
namespace {

using testing::Nmse;
using testing::RandomVector;

TEST(F16Test, RoundTripsEveryFiniteHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) continue;  // NaN payloads
    EXPECT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(F16Test, RoundsToNearestEven) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);
  // 1 + 2^-11 is halfway between 1 and the next half: ties to even (1).
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
}

TEST(BF16Test, RoundTripsEveryFiniteValueAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0) continue;  // NaN payloads
    ASSERT_EQ(F32ToBF16(BF16ToF32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
  EXPECT_EQ(F32ToBF16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between 1 and the next bf16: ties to even (1).
  EXPECT_EQ(F32ToBF16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(F32ToBF16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(F32ToBF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::quiet_NaN()) & 0x7fc0, 0x7fc0);  // stays NaN
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("f16c"))) uint16_t HardwareF16(float f) { return _cvtss_sh(f, 0); }

TEST(F16Test, MatchesF16cOnRandomFloats) {
  if (DetectIsa() == Isa::kScalar) GTEST_SKIP() << "no F16C";
  const std::vector<float> x = RandomVector(100000, 7, 100.0f);
  for (float f : x) {
    ASSERT_EQ(F32ToF16(f), HardwareF16(f)) << f;
    ASSERT_EQ(F32ToF16(f * 1e-6f), HardwareF16(f * 1e-6f)) << f * 1e-6f;
  }
}
#endif

struct RoundTripCase {
  DType type;
  double max_nmse;  // of dequant(quant(x)) for Gaussian x
};

class QuantRoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(QuantRoundTripTest, ErrorIsWithinGgmlBounds) {
  const RoundTripCase& c = GetParam();
  const int64_t n = 4096;
  const std::vector<float> x = RandomVector(n, 42);
  std::vector<uint8_t> q(RowBytes(c.type, n));
  std::vector<float> y(n);
  QuantizeRow(q.data(), x.data(), c.type, n);
  DequantizeRow(y.data(), q.data(), c.type, n);
  const double nmse = Nmse(y.data(), x.data(), n);
  EXPECT_LT(nmse, c.max_nmse) << GetDType(c.type).name;
  // Zeros stay zeros.
  std::vector<float> zeros(n, 0.0f);
  QuantizeRow(q.data(), zeros.data(), c.type, n);
  DequantizeRow(y.data(), q.data(), c.type, n);
  for (float v : y) ASSERT_EQ(v, 0.0f);
}

// Bounds: about 1.3x the NMSE ggml's reference quantizers reach on Gaussian data.
INSTANTIATE_TEST_SUITE_P(
    AllTypes, QuantRoundTripTest,
    ::testing::Values(RoundTripCase{DType::kF16, 1e-7}, RoundTripCase{DType::kBF16, 4e-6},
                      RoundTripCase{DType::kQ4_0, 1.3e-2}, RoundTripCase{DType::kQ4_1, 1.1e-2},
                      RoundTripCase{DType::kQ5_0, 2.5e-3}, RoundTripCase{DType::kQ5_1, 1.9e-3},
                      RoundTripCase{DType::kQ8_0, 5e-5}, RoundTripCase{DType::kQ8_1, 5e-5},
                      RoundTripCase{DType::kQ4_K, 1e-2}, RoundTripCase{DType::kQ5_K, 1.7e-3},
                      RoundTripCase{DType::kQ6_K, 8e-4}, RoundTripCase{DType::kQ8_K, 7e-5}),
    [](const auto& info) { return std::string(GetDType(info.param.type).name); });

TEST(QuantTest, Q8_0IsExactOnItsGrid) {
  float x[kQK];
  for (int j = 0; j < kQK; ++j) x[j] = (j - 16) * 0.5f;
  x[0] = -63.5f;  // amax 63.5 -> d = 0.5
  BlockQ8_0 b;
  QuantizeRow(&b, x, DType::kQ8_0, kQK);
  float y[kQK];
  DequantizeRow(y, &b, DType::kQ8_0, kQK);
  for (int j = 0; j < kQK; ++j) EXPECT_EQ(y[j], x[j]);
}

TEST(QuantTest, Q8_1StoresScaledBlockSum) {
  const std::vector<float> x = RandomVector(64, 3);
  BlockQ8_1 b[2];
  QuantizeRow(b, x.data(), DType::kQ8_1, 64);
  for (const BlockQ8_1& blk : b) {
    int sum = 0;
    for (int8_t v : blk.qs) sum += v;
    EXPECT_NEAR(F16ToF32(blk.s), sum * F16ToF32(blk.d), std::fabs(sum * F16ToF32(blk.d)) * 1e-3);
  }
}

TEST(QuantTest, Q8_KBlockSumsAreExact) {
  const std::vector<float> x = RandomVector(256, 5);
  BlockQ8_K b;
  QuantizeRow(&b, x.data(), DType::kQ8_K, 256);
  for (int g = 0; g < 16; ++g) {
    int sum = 0;
    for (int l = 0; l < 16; ++l) sum += b.qs[g * 16 + l];
    EXPECT_EQ(b.bsums[g], sum);
  }
}

TEST(QuantTest, Q4_1RepresentsBlockMinAndMax) {
  float x[kQK];
  for (int j = 0; j < kQK; ++j) x[j] = 1.0f + j * (2.0f / 31);  // min 1, max 3
  BlockQ4_1 b;
  QuantizeRow(&b, x, DType::kQ4_1, kQK);
  float y[kQK];
  DequantizeRow(y, &b, DType::kQ4_1, kQK);
  EXPECT_NEAR(y[0], 1.0f, 1e-3);
  EXPECT_NEAR(y[31], 3.0f, 2e-3);
}

}  // namespace
}  // namespace pdserve::kernels
