#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
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

// A weight matrix quantized from Gaussian floats, owning its bytes; packed
// with PackWeights when `packed` and the type has a packed form.
struct TestWeights {
  std::vector<uint8_t> bytes, packed_bytes;
  WeightMatrix w;
  TestWeights(DType type, int64_t n_out, int64_t n_in, uint32_t seed, bool packed = false) {
    const std::vector<float> f = RandomVector(n_out * n_in, seed, 0.05f);
    const int64_t row_bytes = RowBytes(type, n_in);
    bytes.resize(n_out * row_bytes + 64);
    for (int64_t r = 0; r < n_out; ++r) {
      QuantizeRow(bytes.data() + r * row_bytes, f.data() + r * n_in, type, n_in);
    }
    w = {bytes.data(), type, n_out, n_in};
    if (packed && PackedWeightBytes(w) > 0) {
      packed_bytes.resize(PackedWeightBytes(w));
      // Two calls as two threads would make them.
      PackWeights(packed_bytes.data(), w, 1, 2);
      w = PackWeights(packed_bytes.data(), w, 0, 2);
    }
  }
};

// Tolerances. Against MatMulQuantRef (same encoded activations, double
// accumulation) only float rounding differs: max error ≤ 5e-6 of max |y|
// (measured ~2e-7). Against MatMulRef (float activations) int8 activation
// quantization adds error: NMSE ≤ 2e-4 for Q8_1/Q8_K activations (measured
// 3e-5 and 5.5e-5 on Gaussian data), 1e-10 for float ones.
constexpr double kQuantRefMaxRel = 5e-6;
double FloatRefNmse(DType t) { return ActFormatFor(t) == ActFormat::kF32 ? 1e-10 : 2e-4; }

void CheckMatMul(DType type, Shape s, Isa isa, int nth, bool packed) {
  SCOPED_TRACE(std::string(GetDType(type).name) + (packed ? " packed " : " ") + IsaName(isa) +
               " n_out=" + std::to_string(s.n_out) + " n_in=" + std::to_string(s.n_in) +
               " n_tokens=" + std::to_string(s.n_tokens) + " nth=" + std::to_string(nth));
  ScopedIsa scoped(isa);
  TestWeights tw(type, s.n_out, s.n_in, 1234 + static_cast<uint32_t>(s.n_out), packed);
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

bool IsKQuant(DType t) { return GetDType(t).block_size == kQKK; }

// Param: weight type, packed layout.
class MatMulTest : public ::testing::TestWithParam<std::tuple<DType, bool>> {};

// Every type unpacked, and packed where it has a packed form (a type
// without one is not instantiated packed rather than skipped: a skip in CI
// must mean a missing GPU, nothing else).
std::vector<std::tuple<DType, bool>> WeightTypeParams() {
  std::vector<std::tuple<DType, bool>> params;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,
                  DType::kQ5_1, DType::kQ8_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    params.emplace_back(t, false);
    if (PackedWeightBytes({nullptr, t, 16, 256}) > 0) params.emplace_back(t, true);
  }
  return params;
}

TEST_P(MatMulTest, MatchesReferencesOnEveryIsaAndShapeClass) {
  const auto [type, packed] = GetParam();
  // n_in: 576 is a multiple of 32 but not of 256 (the model's width).
  const int64_t n_in = IsKQuant(type) ? 512 : 576;
  for (Isa isa : testing::SupportedIsas()) {
    // Every token-tile remainder (tiles of 4 and 8 tokens), and a long batch.
    for (int64_t n_tokens = 1; n_tokens <= 17; ++n_tokens) {
      CheckMatMul(type, {37, n_in, n_tokens}, isa, 1, packed);
    }
    CheckMatMul(type, {37, n_in, 32}, isa, 1, packed);
    // A last pair of packed K-quant groups with 13 rows (the second one
    // partial), under a tile of 8 tokens plus 1.
    CheckMatMul(type, {29, n_in, 9}, isa, 1, packed);
    CheckMatMul(type, {67, n_in, 4}, isa, 2, packed);
    CheckMatMul(type, {1, n_in, 3}, isa, 2, packed);  // fewer rows than threads
    CheckMatMul(type, {130, IsKQuant(type) ? 256 : 64, 7}, isa, 3, packed);
    // More than 8 group pairs under several token tiles: the AVX-512 K-quant
    // prefill unpacks blocks of at most 8 pairs, the last one partial.
    CheckMatMul(type, {150, n_in, 12}, isa, 1, packed);
    // Long rows: the on-the-fly packing of ggml rows works in k chunks.
    CheckMatMul(type, {20, IsKQuant(type) ? 1024 : 2080, 3}, isa, 1, packed);
    // K-quant rows past 64 super-blocks: the AVX-512 Q6_K tile then computes
    // its dot starts itself rather than once per block of group pairs.
    if (IsKQuant(type)) CheckMatMul(type, {40, 65 * kQKK, 9}, isa, 1, packed);
  }
}

TEST_P(MatMulTest, PrefillShapeMatchesReference) {
  const auto [type, packed] = GetParam();
  for (Isa isa : testing::SupportedIsas()) {
    CheckMatMul(type, {45, IsKQuant(type) ? 256 : 96, 512}, isa, 2, packed);
  }
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, MatMulTest, ::testing::ValuesIn(WeightTypeParams()),
                         [](const auto& info) {
                           return std::string(GetDType(std::get<0>(info.param)).name) +
                                  (std::get<1>(info.param) ? "_packed" : "");
                         });

// A token's output must not depend on the batch it is computed in: the
// engine expects batched and solo decoding to pick the same tokens.
TEST_P(MatMulTest, TokenResultsDoNotDependOnTheBatch) {
  const auto [type, packed] = GetParam();
  const int64_t n_in = IsKQuant(type) ? 512 : 576, n_out = 40, n_tokens = 13;
  TestWeights tw(type, n_out, n_in, 21, packed);
  const std::vector<float> x = RandomVector(n_tokens * n_in, 22);
  const ActFormat f = ActFormatFor(type);
  const int64_t rb = ActRowBytes(f, n_in);
  std::vector<uint8_t> xq(rb * n_tokens);
  QuantizeActivations(xq.data(), f, x.data(), n_in, n_tokens, 0, 1);
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    std::vector<float> all(n_tokens * n_out), one(n_out);
    MatMul(all.data(), n_out, tw.w, xq.data(), n_tokens, 0, 1);
    for (int64_t t = 0; t < n_tokens; ++t) {
      MatMul(one.data(), n_out, tw.w, xq.data() + t * rb, 1, 0, 1);
      for (int64_t r = 0; r < n_out; ++r) ASSERT_EQ(one[r], all[t * n_out + r]) << t << " " << r;
    }
  }
}

TEST(MatMulPackTest, PackedRowsDequantizeLikeGgmlRows) {
  for (DType type : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0}) {
    const TestWeights plain(type, 37, 96, 3), packed(type, 37, 96, 3, true);
    EXPECT_EQ(packed.w.layout, WeightLayout::kPacked);
    EXPECT_EQ(PackedWeightBytes(plain.w), 3 * RowBytes(type, 96) * 16);
    EXPECT_EQ(PackedWeightBytes(packed.w), 0);  // already packed
    std::vector<float> a(96), b(96);
    for (int64_t r = 0; r < 37; ++r) {
      DequantizeWeightRow(a.data(), plain.w, r);
      DequantizeWeightRow(b.data(), packed.w, r);
      ASSERT_EQ(a, b) << GetDType(type).name << " row " << r;
    }
  }
  // K-quants: 8-row groups; 37 rows leave a group of 5 (3 zero-padded).
  for (DType type : {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    const TestWeights plain(type, 37, 512, 3), packed(type, 37, 512, 3, true);
    EXPECT_EQ(packed.w.layout, WeightLayout::kPacked);
    const int64_t per_row = type == DType::kQ4_K ? 148 : type == DType::kQ5_K ? 180 : 210;
    EXPECT_EQ(PackedWeightBytes(plain.w), 5 * 8 * 2 * per_row);
    EXPECT_EQ(PackedWeightBytes(packed.w), 0);
    EXPECT_EQ(PackedWeightBytes({nullptr, type, 8, 320}), 0);  // not whole super-blocks
    std::vector<float> a(512), b(512);
    for (int64_t r = 0; r < 37; ++r) {
      DequantizeWeightRow(a.data(), plain.w, r);
      DequantizeWeightRow(b.data(), packed.w, r);
      ASSERT_EQ(a, b) << GetDType(type).name << " row " << r;
    }
  }
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16}) {
    EXPECT_EQ(PackedWeightBytes(TestWeights(type, 16, 256, 1).w), 0);
  }
}

// Q4_K/Q5_K weights whose mins cancel the scaled quants (the dummy models'
// recipe: sub-block scales in [32, 63], m = sc·mid/16, dmin = 16·d, random
// quants): the mins' term and the quants' term are each much larger than
// their difference, so a kernel that rounds either before subtracting is
// off by far more than float rounding of the result.
TEST(MatMulKQuantTest, CancellingMinsMatchTheReference) {
  const int64_t n_out = 24, n_in = 2048, n_tokens = 5;
  for (DType type : {DType::kQ4_K, DType::kQ5_K}) {
    const int64_t row_bytes = RowBytes(type, n_in);
    std::vector<uint8_t> bytes(n_out * row_bytes);
    uint32_t state = 12345;
    auto next = [&] {
      state = state * 1664525u + 1013904223u;
      return static_cast<uint8_t>(state >> 24);
    };
    const bool q5 = type == DType::kQ5_K;
    const float mid = q5 ? 15.5f : 7.5f, d = 0.05f / (63 * mid);
    const int64_t bs = GetDType(type).type_size;
    for (int64_t i = 0; i < n_out * n_in / kQKK; ++i) {
      uint8_t* blk = bytes.data() + i * bs;
      uint8_t sc[8], m[8], scales[kKScaleBytes] = {};
      for (int j = 0; j < 8; ++j) {
        sc[j] = static_cast<uint8_t>(32 + (next() & 31));
        m[j] = static_cast<uint8_t>(std::lround(sc[j] * mid / 16));
      }
      for (int j = 0; j < 4; ++j) {
        scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
        scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
        scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
      }
      const uint16_t d16 = F32ToF16(d), dmin16 = F32ToF16(16 * d);
      std::memcpy(blk, &d16, 2);
      std::memcpy(blk + 2, &dmin16, 2);
      std::memcpy(blk + 4, scales, sizeof(scales));
      for (int64_t k = 4 + kKScaleBytes; k < bs; ++k) blk[k] = next();
    }
    const WeightMatrix plain{bytes.data(), type, n_out, n_in};
    std::vector<uint8_t> packed_bytes(PackedWeightBytes(plain));
    const WeightMatrix packed = PackWeights(packed_bytes.data(), plain, 0, 1);
    const std::vector<float> x = RandomVector(n_tokens * n_in, 5);
    std::vector<uint8_t> xq(ActRowBytes(ActFormat::kQ8_K, n_in) * n_tokens);
    QuantizeActivations(xq.data(), ActFormat::kQ8_K, x.data(), n_in, n_tokens, 0, 1);
    std::vector<float> want(n_out * n_tokens), got(n_out * n_tokens);
    MatMulQuantRef(want.data(), n_out, plain, xq.data(), n_tokens);
    for (Isa isa : testing::SupportedIsas()) {
      ScopedIsa scoped(isa);
      for (const WeightMatrix& w : {plain, packed}) {
        MatMul(got.data(), n_out, w, xq.data(), n_tokens, 0, 1);
        EXPECT_LT(MaxRelErr(got.data(), want.data(), got.size()), kQuantRefMaxRel)
            << GetDType(type).name << " " << IsaName(isa)
            << (w.layout == WeightLayout::kPacked ? " packed" : " ggml rows");
      }
    }
  }
}

// Packs `plain` and runs n_tokens tokens through it: token 0 all -127,
// token 1 all 127, token 2 alternating runs of `run` elements of each, the
// rest random (seed). Every ISA path must match the reference, and each
// token's solo (AVX2) result bit for bit.
void ExpectExtremeSumsMatch(const WeightMatrix& plain, int64_t n_tokens, int64_t run,
                            uint32_t seed) {
  const int64_t n_out = plain.n_out, n_in = plain.n_in;
  std::vector<uint8_t> packed_bytes(PackedWeightBytes(plain));
  const WeightMatrix packed = PackWeights(packed_bytes.data(), plain, 0, 1);
  std::vector<float> x = RandomVector(n_tokens * n_in, seed);
  for (int64_t k = 0; k < n_in; ++k) {
    x[k] = -1;
    x[n_in + k] = 1;
    x[2 * n_in + k] = (k / run) % 2 ? 1 : -1;
  }
  const int64_t rb = ActRowBytes(ActFormat::kQ8_K, n_in);
  std::vector<uint8_t> xq(rb * n_tokens);
  QuantizeActivations(xq.data(), ActFormat::kQ8_K, x.data(), n_in, n_tokens, 0, 1);
  std::vector<float> want(n_out * n_tokens), got(n_out * n_tokens), one(n_out);
  MatMulQuantRef(want.data(), n_out, plain, xq.data(), n_tokens);
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    MatMul(got.data(), n_out, packed, xq.data(), n_tokens, 0, 1);
    EXPECT_LT(MaxRelErr(got.data(), want.data(), got.size()), kQuantRefMaxRel);
    for (int64_t t = 0; t < n_tokens; ++t) {
      MatMul(one.data(), n_out, packed, xq.data() + t * rb, 1, 0, 1);
      for (int64_t r = 0; r < n_out; ++r) ASSERT_EQ(one[r], got[t * n_out + r]) << t << " " << r;
    }
  }
}

// Q6_K and activations at the ends of their ranges: quants all 0 (value -32)
// or all 63, scales -128 or 127, activations all -127 or all 127. A dot over
// 8 elements then reaches 8·32·127 = 32512, the most the AVX-512 kernel's
// int16 half-sub-block sums hold. Every token must match the reference, and
// its solo (AVX2) result bit for bit.
TEST(MatMulKQuantTest, ExtremeQ6KSumsMatchTheReference) {
  const int64_t n_out = 32, n_in = 512, n_tokens = 9;
  const int64_t nb = n_in / kQKK;
  std::vector<BlockQ6_K> blocks(n_out * nb);
  uint32_t state = 777;
  auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return static_cast<uint8_t>(state >> 24);
  };
  for (int64_t r = 0; r < n_out; ++r) {
    for (int64_t ib = 0; ib < nb; ++ib) {
      BlockQ6_K& b = blocks[r * nb + ib];
      const int kind = static_cast<int>(r % 4);  // 0, 1: quants 0; 2: 63; 3: random
      for (uint8_t& v : b.ql) v = kind == 2 ? 0xFF : kind == 3 ? next() : 0;
      for (uint8_t& v : b.qh) v = kind == 2 ? 0xFF : kind == 3 ? next() : 0;
      for (int s = 0; s < 16; ++s) {
        b.scales[s] = static_cast<int8_t>(kind == 1 || (kind == 3 && s % 2) ? 127 : -128);
      }
      b.d = F32ToF16(1e-3f);
    }
  }
  ExpectExtremeSumsMatch(WeightMatrix{blocks.data(), DType::kQ6_K, n_out, n_in}, n_tokens,
                         /*run=*/8, /*seed=*/6);
}

// Q4_K/Q5_K at the ends of their ranges: quants all 0 or all 15/31, scales
// and mins 63, activations all -127 or all 127. A dot over 16 elements then
// reaches 16·15·127 = 30480 (Q4_K) or, offset by -16, 16·16·127 = 32512
// (Q5_K), the most the AVX-512 kernel's int16 run sums hold. Every token
// must match the reference, and its solo (AVX2) result bit for bit.
TEST(MatMulKQuantTest, ExtremeQ4KQ5KSumsMatchTheReference) {
  const int64_t n_out = 24, n_in = 512, n_tokens = 9;
  for (DType type : {DType::kQ4_K, DType::kQ5_K}) {
    SCOPED_TRACE(GetDType(type).name);
    const int64_t bs = GetDType(type).type_size, nb = n_in / kQKK;
    std::vector<uint8_t> bytes(n_out * nb * bs);
    uint32_t state = 99;
    auto next = [&] {
      state = state * 1664525u + 1013904223u;
      return static_cast<uint8_t>(state >> 24);
    };
    for (int64_t r = 0; r < n_out; ++r) {
      for (int64_t ib = 0; ib < nb; ++ib) {
        uint8_t* blk = bytes.data() + (r * nb + ib) * bs;
        const int kind = static_cast<int>(r % 3);  // quants 0, max, random
        const uint16_t d16 = F32ToF16(1e-3f), dmin16 = F32ToF16(2e-3f);
        std::memcpy(blk, &d16, 2);
        std::memcpy(blk + 2, &dmin16, 2);
        std::memset(blk + 4, 0xFF, kKScaleBytes);  // every scale and min 63
        for (int64_t k = 4 + kKScaleBytes; k < bs; ++k) {
          blk[k] = kind == 0 ? 0 : kind == 1 ? 0xFF : next();
        }
      }
    }
    ExpectExtremeSumsMatch(WeightMatrix{bytes.data(), type, n_out, n_in}, n_tokens,
                           /*run=*/16, /*seed=*/7);
  }
}

// The kernel tests cover every path SupportedIsas() lists; a path this CPU
// lacks is refused (and so not covered here), never run.
TEST(MatMulApiTest, IsaPathsAreTheOnesTheCpuRuns) {
  ::testing::Test::RecordProperty("detected_isa", IsaName(DetectIsa()));
  const std::vector<Isa> isas = testing::SupportedIsas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::kScalar);
  EXPECT_EQ(isas.back(), DetectIsa());
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    const bool runs = static_cast<int>(isa) <= static_cast<int>(DetectIsa());
    EXPECT_EQ(SetIsa(isa), runs) << IsaName(isa);
    EXPECT_EQ(ActiveIsa(), runs ? isa : Isa::kScalar) << IsaName(isa);
    SetIsa(Isa::kScalar);
  }
  SetIsa(DetectIsa());
  EXPECT_EQ(ActiveIsa(), DetectIsa());
}

TEST(MatMulApiTest, ActFormats) {
  EXPECT_EQ(ActFormatFor(DType::kQ4_1), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ8_0), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ4_0), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ5_0), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ5_1), ActFormat::kQ8_1);
  EXPECT_EQ(ActFormatFor(DType::kQ4_K), ActFormat::kQ8_K);
  EXPECT_EQ(ActFormatFor(DType::kQ5_K), ActFormat::kQ8_K);
  EXPECT_EQ(ActFormatFor(DType::kQ6_K), ActFormat::kQ8_K);
  EXPECT_EQ(ActFormatFor(DType::kF16), ActFormat::kF32);
  EXPECT_EQ(ActFormatFor(DType::kBF16), ActFormat::kF32);
  EXPECT_EQ(ActFormatFor(DType::kF32), ActFormat::kF32);
  EXPECT_EQ(ActRowBytes(ActFormat::kQ8_1, 576), 576 + 18 * 8);
  EXPECT_EQ(ActRowBytes(ActFormat::kQ8_K, 512), 2 * 292);
  EXPECT_EQ(ActRowBytes(ActFormat::kF32, 576), 576 * 4);
}

TEST(MatMulApiTest, EncodedActivationsAreTheSameOnEveryIsa) {
  const int64_t n_in = 576, n_rows = 5;
  std::vector<float> x = RandomVector(n_in * n_rows, 8, 3.0f);
  for (int j = 0; j < 32; ++j) x[64 + j] = 0.0f;  // an all-zero block
  const int64_t rb = ActRowBytes(ActFormat::kQ8_1, n_in);
  EXPECT_EQ(rb, n_in + 18 * 8);
  std::vector<uint8_t> ref(rb * n_rows);
  {
    ScopedIsa scoped(Isa::kScalar);
    QuantizeActivations(ref.data(), ActFormat::kQ8_1, x.data(), n_in, n_rows, 0, 1);
  }
  // Dequantized activations are within half a step of x.
  for (int64_t r = 0; r < n_rows; ++r) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(ref.data() + r * rb);
    const float* d = reinterpret_cast<const float*>(ref.data() + r * rb + n_in);
    for (int64_t k = 0; k < n_in; ++k) {
      ASSERT_NEAR(qs[k] * d[k / 32], x[r * n_in + k], 0.5001f * d[k / 32]);
    }
    for (int64_t b = 0; b < n_in / 32; ++b) {
      int sum = 0;
      for (int j = 0; j < 32; ++j) sum += qs[b * 32 + j];
      ASSERT_EQ(d[n_in / 32 + b], d[b] * static_cast<float>(sum));
    }
  }
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    std::vector<uint8_t> xq(rb * n_rows);
    QuantizeActivations(xq.data(), ActFormat::kQ8_1, x.data(), n_in, n_rows, 0, 1);
    EXPECT_EQ(xq, ref);
  }
}

// Q8_K (the K-quants' activations): every ISA writes the scalar encoder's
// bytes, including the sign of the scale when the largest magnitude occurs
// with both signs (the first one wins), rounding ties and all-zero blocks.
TEST(MatMulApiTest, EncodedQ8KActivationsAreTheSameOnEveryIsa) {
  const int64_t n_in = 1024, n_rows = 4;
  std::vector<float> x = RandomVector(n_in * n_rows, 9, 3.0f);
  for (int j = 0; j < 256; ++j) x[256 + j] = 0.0f;  // row 0, block 1: all zero
  x[512 + 40] = 50.0f, x[512 + 200] = -50.0f;       // row 0, block 2: +50 first
  x[768 + 17] = -50.0f, x[768 + 90] = 50.0f;        // row 0, block 3: -50 first
  // Row 1, block 0: multiples of the step's half (ties round to even).
  x[n_in + 0] = 127.0f;
  for (int j = 1; j < 256; ++j) x[n_in + j] = 0.5f * static_cast<float>(j % 200 - 100);
  const int64_t rb = ActRowBytes(ActFormat::kQ8_K, n_in);
  std::vector<uint8_t> ref(rb * n_rows);
  {
    ScopedIsa scoped(Isa::kScalar);
    QuantizeActivations(ref.data(), ActFormat::kQ8_K, x.data(), n_in, n_rows, 0, 1);
  }
  const BlockQ8_K* b = reinterpret_cast<const BlockQ8_K*>(ref.data());
  EXPECT_EQ(b[1].d, 0.0f);
  EXPECT_LT(b[2].d, 0.0f);  // scale -127/max: max = +50
  EXPECT_GT(b[3].d, 0.0f);
  for (Isa isa : testing::SupportedIsas()) {
    SCOPED_TRACE(IsaName(isa));
    ScopedIsa scoped(isa);
    std::vector<uint8_t> xq(rb * n_rows);
    QuantizeActivations(xq.data(), ActFormat::kQ8_K, x.data(), n_in, n_rows, 0, 1);
    EXPECT_EQ(xq, ref);
    // The fused path (RMS norm, then encode in chunks) too.
    std::vector<float> w(n_in, 1.0f);
    std::vector<uint8_t> fused(rb), fused_ref(rb);
    RmsNormQuantize(fused.data(), ActFormat::kQ8_K, x.data() + n_in, w.data(), n_in, 1e-5f);
    {
      ScopedIsa scalar(Isa::kScalar);
      RmsNormQuantize(fused_ref.data(), ActFormat::kQ8_K, x.data() + n_in, w.data(), n_in, 1e-5f);
    }
    EXPECT_EQ(fused, fused_ref);
  }
}

TEST(MatMulApiTest, FusedRowOpsEqualOpThenQuantize) {
  const int64_t n = 1536;
  const std::vector<float> x = RandomVector(n, 11, 2.0f), w = RandomVector(n, 12);
  const std::vector<float> gate = RandomVector(n, 13, 3.0f), up = RandomVector(n, 14);
  for (Isa isa : testing::SupportedIsas()) {
    ScopedIsa scoped(isa);
    for (ActFormat f : {ActFormat::kF32, ActFormat::kQ8_1, ActFormat::kQ8_K}) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " format " + std::to_string(static_cast<int>(f)));
      const int64_t rb = ActRowBytes(f, n);
      std::vector<float> tmp(n);
      std::vector<uint8_t> fused(rb), ref(rb);
      RmsNorm(tmp.data(), x.data(), w.data(), n, 1e-5f);
      QuantizeActivations(ref.data(), f, tmp.data(), n, 1, 0, 1);
      RmsNormQuantize(fused.data(), f, x.data(), w.data(), n, 1e-5f);
      EXPECT_EQ(fused, ref);
      SwiGlu(tmp.data(), gate.data(), up.data(), n);
      QuantizeActivations(ref.data(), f, tmp.data(), n, 1, 0, 1);
      SwiGluQuantize(fused.data(), f, gate.data(), up.data(), n);
      EXPECT_EQ(fused, ref);
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
