#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/isa.h"
#include "tests/unit/kernels/test_util.h"

namespace pdserve::kernels {
namespace {

using testing::MaxRelErr;
using testing::RandomVector;

// Float ops against double references: a few ulps of float rounding.
constexpr double kOpsMaxRel = 1e-5;

TEST(OpsTest, RmsNormMatchesReference) {
  for (int64_t n : {1, 7, 64, 576, 1000}) {
    const std::vector<float> x = RandomVector(n, 1, 3.0f), w = RandomVector(n, 2);
    std::vector<float> y(n), ref(n);
    RmsNorm(y.data(), x.data(), w.data(), n, 1e-5f);
    RmsNormRef(ref.data(), x.data(), w.data(), n, 1e-5f);
    EXPECT_LT(MaxRelErr(y.data(), ref.data(), n), kOpsMaxRel) << n;
    // In place.
    std::vector<float> z = x;
    RmsNorm(z.data(), z.data(), w.data(), n, 1e-5f);
    EXPECT_EQ(z, y);
  }
}

TEST(OpsTest, RopeMatchesReference) {
  const int n_heads = 9, head_dim = 64;
  for (int n_rot : {64, 32}) {
    std::vector<float> cs(head_dim);
    for (int i = 0; i < head_dim / 2; ++i) {
      const double theta = 37 * std::pow(100000.0, -2.0 * i / head_dim);
      cs[2 * i] = static_cast<float>(std::cos(theta));
      cs[2 * i + 1] = static_cast<float>(std::sin(theta));
    }
    std::vector<float> x = RandomVector(n_heads * head_dim, 3), ref = x;
    Rope(x.data(), n_heads, head_dim, n_rot, cs.data());
    RopeRef(ref.data(), n_heads, head_dim, n_rot, cs.data());
    EXPECT_LT(MaxRelErr(x.data(), ref.data(), x.size()), kOpsMaxRel);
  }
}

TEST(OpsTest, SwiGluMatchesReference) {
  for (Isa isa : testing::SupportedIsas()) {
    testing::ScopedIsa scoped(isa);
    for (int64_t n : {1, 13, 1536}) {
      const std::vector<float> g = RandomVector(n, 4, 4.0f), u = RandomVector(n, 5);
      std::vector<float> y(n), ref(n);
      SwiGlu(y.data(), g.data(), u.data(), n);
      SwiGluRef(ref.data(), g.data(), u.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_NEAR(y[i], ref[i], 1e-5 * (std::fabs(ref[i]) + std::fabs(u[i]))) << i;
      }
      std::vector<float> z = g;  // in place
      SwiGlu(z.data(), z.data(), u.data(), n);
      EXPECT_EQ(z, y);
    }
  }
}

TEST(OpsTest, SoftmaxMatchesReference) {
  for (Isa isa : testing::SupportedIsas()) {
    testing::ScopedIsa scoped(isa);
    for (int64_t n : {1, 5, 100, 4097}) {
      std::vector<float> x = RandomVector(n, 6, 10.0f), ref = x;
      Softmax(x.data(), n);
      SoftmaxRef(ref.data(), n);
      EXPECT_LT(MaxRelErr(x.data(), ref.data(), n), kOpsMaxRel);
      double sum = 0;
      for (float v : x) sum += v;
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
    std::vector<float> big(20, -1000.0f);  // no overflow
    big[0] = big[17] = 1000.0f;
    Softmax(big.data(), 20);
    EXPECT_FLOAT_EQ(big[0], 0.5f);
    EXPECT_FLOAT_EQ(big[17], 0.5f);
    EXPECT_NEAR(big[2], 0.0f, 1e-30);
  }
}

TEST(OpsTest, AddInplace) {
  std::vector<float> y = {1, 2, 3}, x = {0.5f, -2, 10};
  AddInplace(y.data(), x.data(), 3);
  EXPECT_EQ(y, (std::vector<float>{1.5f, 0, 13}));
}

}  // namespace
}  // namespace pdserve::kernels
