// Every CUDA kernel against its CPU reference (kernels/cpu, kernels/quant.h).
//
// Tolerances, as normalized mean squared error Σ(gpu-ref)² / Σref²:
//   bit-exact (0): embedding lookup and weight dequantization, Q8_1/Q8_K
//     activation encoding of the same floats, KV store, RoPE, pack/unpack;
//   1e-10: float kernels against double references (RMSNorm, SwiGLU,
//     softmax, attention, integer-dot matvec against MatMulQuantRef);
//   1e-10 for the cuBLAS GEMM against a double product of the same f16
//     operands, and 1e-5 against the float operands before f16 rounding.
// Inputs are fresh random numbers; outputs are poisoned (NaN) first so an
// element the kernel never writes fails the comparison.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_pack.h"
#include "kernels/cuda/matvec.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quantize.h"
#include "kernels/quant.h"
#include "tests/unit/cuda/cuda_test_util.h"
#include "tests/unit/kernels/test_util.h"

namespace pdserve::kernels {
namespace {

using cuda_testing::DeviceArray;
using testing::Nmse;
using testing::RandomVector;

class CudaKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override { PDS_SKIP_WITHOUT_GPU(); }
};

// Quantized rows of `type` holding random values.
std::vector<uint8_t> RandomWeights(DType type, int64_t n_out, int64_t n_in, uint32_t seed) {
  const int64_t rb = RowBytes(type, n_in);
  std::vector<uint8_t> w(static_cast<size_t>(rb * n_out));
  const std::vector<float> v = RandomVector(n_out * n_in, seed, 0.5f);
  for (int64_t r = 0; r < n_out; ++r)
    QuantizeRow(w.data() + r * rb, v.data() + r * n_in, type, n_in);
  return w;
}

bool Finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

const DType kWeightTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                              DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                              DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

TEST_F(CudaKernelsTest, EmbedRowsMatchesDequantizeRow) {
  for (DType type : kWeightTypes) {
    SCOPED_TRACE(GetDType(type).name);
    const int64_t n_vocab = 40, n = 512, n_rows = 7;
    const std::vector<uint8_t> table = RandomWeights(type, n_vocab, n, 11);
    const std::vector<int32_t> tokens = {3, 0, 39, 3, 17, 22, 8};
    DeviceArray<uint8_t> d_table(table);
    DeviceArray<int32_t> d_tokens(tokens);
    DeviceArray<float> d_x(n_rows * n);
    d_x.Poison();
    PDS_CUDA_OK(
        cuda::EmbedRows(d_x.get(), d_table.get(), type, d_tokens.get(), n_rows, n, nullptr));
    const std::vector<float> x = d_x.Download();
    std::vector<float> ref(n);
    for (int64_t r = 0; r < n_rows; ++r) {
      DequantizeRow(ref.data(), table.data() + tokens[r] * RowBytes(type, n), type, n);
      for (int64_t k = 0; k < n; ++k) ASSERT_EQ(x[r * n + k], ref[k]) << "row " << r << " k " << k;
    }
  }
}

TEST_F(CudaKernelsTest, DequantizeToF16MatchesCpu) {
  for (DType type : kWeightTypes) {
    SCOPED_TRACE(GetDType(type).name);
    const int64_t n_out = 9, n_in = 256;
    const std::vector<uint8_t> w = RandomWeights(type, n_out, n_in, 12);
    DeviceArray<uint8_t> d_w(w);
    DeviceArray<__half> d_y(n_out * n_in);
    d_y.Poison();
    PDS_CUDA_OK(cuda::DequantizeToF16(d_y.get(), d_w.get(), type, n_out, n_in, nullptr));
    const std::vector<__half> y = d_y.Download();
    std::vector<float> ref(n_in);
    for (int64_t r = 0; r < n_out; ++r) {
      DequantizeRow(ref.data(), w.data() + r * RowBytes(type, n_in), type, n_in);
      for (int64_t k = 0; k < n_in; ++k) {
        uint16_t bits;
        std::memcpy(&bits, &y[r * n_in + k], 2);
        ASSERT_EQ(bits, F32ToF16(ref[k])) << "row " << r << " k " << k;
      }
    }
  }
}

TEST_F(CudaKernelsTest, RmsNormMatchesReference) {
  const int64_t n_rows = 5, n = 4096;
  const std::vector<float> x = RandomVector(n_rows * n, 21, 3.0f), w = RandomVector(n, 22);
  DeviceArray<float> d_x(x), d_w(w), d_y(n_rows * n);
  d_y.Poison();
  PDS_CUDA_OK(cuda::RmsNorm(d_y.get(), d_x.get(), d_w.get(), n_rows, n, 1e-5f, nullptr));
  const std::vector<float> y = d_y.Download();
  std::vector<float> ref(n_rows * n);
  for (int64_t r = 0; r < n_rows; ++r) RmsNormRef(&ref[r * n], &x[r * n], w.data(), n, 1e-5f);
  EXPECT_LT(Nmse(y.data(), ref.data(), y.size()), 1e-10);
}

TEST_F(CudaKernelsTest, RopeMatchesReference) {
  const int n_rows = 6, n_heads = 4, head_dim = 64, n_rot = 48, n_pos = 100;
  const int64_t ld = n_heads * head_dim + 8;
  std::vector<float> x = RandomVector(n_rows * ld, 31);
  std::vector<float> cs(n_pos * n_rot);
  for (int p = 0; p < n_pos; ++p) {
    for (int i = 0; i < n_rot / 2; ++i) {
      const double theta = p * std::pow(10000.0, -2.0 * i / n_rot);
      cs[p * n_rot + 2 * i] = static_cast<float>(std::cos(theta));
      cs[p * n_rot + 2 * i + 1] = static_cast<float>(std::sin(theta));
    }
  }
  const std::vector<int32_t> pos = {0, 5, 99, 42, 1, 7};
  DeviceArray<float> d_x(x), d_cs(cs);
  DeviceArray<int32_t> d_pos(pos);
  PDS_CUDA_OK(cuda::Rope(d_x.get(), ld, d_pos.get(), d_cs.get(), n_rows, n_heads, head_dim, n_rot,
                         nullptr));
  const std::vector<float> y = d_x.Download();
  for (int r = 0; r < n_rows; ++r) Rope(&x[r * ld], n_heads, head_dim, n_rot, &cs[pos[r] * n_rot]);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]) << i;  // same float operations
}

TEST_F(CudaKernelsTest, SwiGluSoftmaxAddMatchReferences) {
  const int64_t n = 3000;
  const std::vector<float> g = RandomVector(n, 41, 2.0f), u = RandomVector(n, 42);
  DeviceArray<float> d_g(g), d_u(u), d_y(n);
  d_y.Poison();
  PDS_CUDA_OK(cuda::SwiGlu(d_y.get(), d_g.get(), d_u.get(), n, nullptr));
  std::vector<float> ref(n);
  SwiGluRef(ref.data(), g.data(), u.data(), n);
  EXPECT_LT(Nmse(d_y.Download().data(), ref.data(), n), 1e-10);

  const int64_t rows = 3, cols = 1000;
  std::vector<float> s = RandomVector(rows * cols, 43, 4.0f);
  DeviceArray<float> d_s(s);
  PDS_CUDA_OK(cuda::Softmax(d_s.get(), rows, cols, nullptr));
  for (int64_t r = 0; r < rows; ++r) SoftmaxRef(&s[r * cols], cols);
  EXPECT_LT(Nmse(d_s.Download().data(), s.data(), rows * cols), 1e-10);

  std::vector<float> a = RandomVector(n, 44);
  DeviceArray<float> d_a(a);
  PDS_CUDA_OK(cuda::AddInplace(d_a.get(), d_u.get(), n, nullptr));
  for (int64_t i = 0; i < n; ++i) a[i] += u[i];
  EXPECT_EQ(d_a.Download(), a);
}

// The Q8_1 encoding of the same floats is the CPU's, byte for byte.
TEST_F(CudaKernelsTest, Q8_1EncodingMatchesCpuBytes) {
  const int64_t n_rows = 4, n = 1024;
  const std::vector<float> x = RandomVector(n_rows * n, 51, 2.0f);
  const int64_t rb = ActRowBytes(ActFormat::kQ8_1, n);
  std::vector<uint8_t> ref(n_rows * rb);
  QuantizeActivations(ref.data(), ActFormat::kQ8_1, x.data(), n, n_rows, 0, 1);
  DeviceArray<float> d_x(x), d_f32(n_rows * n);
  DeviceArray<uint8_t> d_q(n_rows * rb);
  DeviceArray<__half> d_f16(n_rows * n);
  d_q.Poison();
  d_f32.Poison();
  cuda::ActOutputs out;
  out.q8_1 = d_q.get();
  out.f32 = d_f32.get();
  out.f16 = d_f16.get();
  out.rounding = cuda::ActRounding::kQ8_1;
  cuda::ActSource src;
  src.x = d_x.get();
  src.ldx = n;
  PDS_CUDA_OK(cuda::PrepareActivations(out, src, n_rows, n, nullptr));
  EXPECT_EQ(d_q.Download(), ref);
  // The rounded floats are quant · scale, as the CPU's dot products see them.
  const std::vector<float> f32 = d_f32.Download();
  const std::vector<__half> f16 = d_f16.Download();
  for (int64_t r = 0; r < n_rows; ++r) {
    const auto* qs = reinterpret_cast<const int8_t*>(ref.data() + r * rb);
    const auto* d = reinterpret_cast<const float*>(qs + n);
    for (int64_t k = 0; k < n; ++k) {
      const float want = static_cast<float>(qs[k]) * d[k / kQK];
      ASSERT_EQ(f32[r * n + k], want);
      uint16_t bits;
      std::memcpy(&bits, &f16[r * n + k], 2);
      ASSERT_EQ(bits, F32ToF16(want));
    }
  }
}

TEST_F(CudaKernelsTest, Q8_KRoundingMatchesCpu) {
  const int64_t n_rows = 3, n = 768;
  const std::vector<float> x = RandomVector(n_rows * n, 52, 1.5f);
  DeviceArray<float> d_x(x), d_f32(n_rows * n);
  d_f32.Poison();
  cuda::ActOutputs out;
  out.f32 = d_f32.get();
  out.rounding = cuda::ActRounding::kQ8_K;
  cuda::ActSource src;
  src.x = d_x.get();
  src.ldx = n;
  PDS_CUDA_OK(cuda::PrepareActivations(out, src, n_rows, n, nullptr));
  const std::vector<float> y = d_f32.Download();
  std::vector<BlockQ8_K> q(n / kQKK);
  for (int64_t r = 0; r < n_rows; ++r) {
    QuantizeRow(q.data(), &x[r * n], DType::kQ8_K, n);
    for (int64_t k = 0; k < n; ++k) {
      const BlockQ8_K& b = q[k / kQKK];
      ASSERT_EQ(y[r * n + k], static_cast<float>(b.qs[k % kQKK]) * b.d) << r << " " << k;
    }
  }
}

// RMSNorm and SwiGLU fused with the encoding: the same quants as the CPU
// computing the op and then QuantizeActivations, except where the op's float
// result sits on a rounding boundary (a different summation order).
TEST_F(CudaKernelsTest, FusedOpsEncodeLikeCpu) {
  const int64_t n_rows = 3, n = 2048;
  const int64_t rb = ActRowBytes(ActFormat::kQ8_1, n);
  const std::vector<float> x = RandomVector(n_rows * 2 * n, 53, 2.0f), w = RandomVector(n, 54);
  const std::vector<int32_t> row_index = {2, 0, 1};
  DeviceArray<float> d_x(x), d_w(w);
  DeviceArray<int32_t> d_idx(row_index);
  DeviceArray<uint8_t> d_q(n_rows * rb);
  for (cuda::ActOp op : {cuda::ActOp::kRmsNorm, cuda::ActOp::kSwiGlu}) {
    SCOPED_TRACE(op == cuda::ActOp::kRmsNorm ? "rmsnorm" : "swiglu");
    std::vector<float> vals(n_rows * n);
    for (int64_t r = 0; r < n_rows; ++r) {
      const float* xr = &x[row_index[r] * 2 * n];
      if (op == cuda::ActOp::kRmsNorm) {
        RmsNorm(&vals[r * n], xr, w.data(), n, 1e-5f);
      } else {
        SwiGluRef(&vals[r * n], xr, xr + n, n);
      }
    }
    std::vector<uint8_t> ref(n_rows * rb);
    QuantizeActivations(ref.data(), ActFormat::kQ8_1, vals.data(), n, n_rows, 0, 1);
    d_q.Poison();
    cuda::ActOutputs out;
    out.q8_1 = d_q.get();
    cuda::ActSource src;
    src.op = op;
    src.x = d_x.get();
    src.ldx = 2 * n;
    src.row_index = d_idx.get();
    src.norm_w = d_w.get();
    src.eps = 1e-5f;
    src.up = d_x.get() + n;
    PDS_CUDA_OK(cuda::PrepareActivations(out, src, n_rows, n, nullptr));
    const std::vector<uint8_t> got = d_q.Download();
    int64_t off_by_one = 0;
    for (int64_t r = 0; r < n_rows; ++r) {
      const auto* g = reinterpret_cast<const int8_t*>(got.data() + r * rb);
      const auto* e = reinterpret_cast<const int8_t*>(ref.data() + r * rb);
      for (int64_t k = 0; k < n; ++k) {
        ASSERT_LE(std::abs(g[k] - e[k]), 1) << r << " " << k;
        off_by_one += g[k] != e[k];
      }
      const auto* gd = reinterpret_cast<const float*>(g + n);
      const auto* ed = reinterpret_cast<const float*>(e + n);
      for (int64_t b = 0; b < n / kQK; ++b) ASSERT_NEAR(gd[b], ed[b], 1e-5f * std::fabs(ed[b]));
    }
    EXPECT_LE(off_by_one, n_rows * n / 500);
  }
}

TEST_F(CudaKernelsTest, MatVecMatchesCpu) {
  const int64_t n_out = 70, n_in = 512;
  for (DType type : kWeightTypes) {
    const std::vector<uint8_t> w = RandomWeights(type, n_out, n_in, 61);
    DeviceArray<uint8_t> d_w(w);
    const WeightMatrix wm{w.data(), type, n_out, n_in};
    // Q4_0/Q4_1/Q8_0 take the CPU's Q8_1 bytes (dp4a); the other types,
    // Q5_0/Q5_1 included, float activations.
    const bool q8 = cuda::MatVecTakesQ8_1(type);
    if (q8) ASSERT_EQ(ActFormatFor(type), ActFormat::kQ8_1);
    const ActFormat f = q8 ? ActFormat::kQ8_1 : ActFormat::kF32;
    for (int64_t n_tokens : {1, 2, 3, 5, 8}) {
      SCOPED_TRACE(std::string(GetDType(type).name) + " tokens " + std::to_string(n_tokens));
      // Float activations, or the CPU's encoded ones for the integer path.
      std::vector<float> x = RandomVector(n_tokens * n_in, 62 + static_cast<uint32_t>(n_tokens));
      const int64_t ld = n_out + 3;
      std::vector<float> ref(n_tokens * ld, 0.0f), got;
      if (f == ActFormat::kQ8_1) {
        std::vector<uint8_t> xq(n_tokens * ActRowBytes(f, n_in));
        QuantizeActivations(xq.data(), f, x.data(), n_in, n_tokens, 0, 1);
        MatMulQuantRef(ref.data(), ld, wm, xq.data(), n_tokens);
        DeviceArray<uint8_t> d_a(xq);
        DeviceArray<float> d_y(n_tokens * ld);
        d_y.Poison();
        PDS_CUDA_OK(cuda::MatVec(d_y.get(), ld, d_w.get(), type, n_out, n_in, d_a.get(), n_tokens,
                                 false, nullptr));
        got = d_y.Download();
        // The CPU's own kernel on the same bytes: only summation order differs.
        std::vector<float> cpu(n_tokens * ld, 0.0f);
        MatMul(cpu.data(), ld, wm, xq.data(), n_tokens, 0, 1);
        for (int64_t t = 0; t < n_tokens; ++t) {
          EXPECT_LT(Nmse(&got[t * ld], &cpu[t * ld], n_out), 1e-10);
        }
      } else {
        MatMulRef(ref.data(), ld, wm, x.data(), n_tokens);
        DeviceArray<float> d_a(x);
        DeviceArray<float> d_y(n_tokens * ld);
        d_y.Poison();
        PDS_CUDA_OK(cuda::MatVec(d_y.get(), ld, d_w.get(), type, n_out, n_in, d_a.get(), n_tokens,
                                 false, nullptr));
        got = d_y.Download();
      }
      for (int64_t t = 0; t < n_tokens; ++t) {
        EXPECT_LT(Nmse(&got[t * ld], &ref[t * ld], n_out), 1e-10) << "token " << t;
      }
    }
  }
}

TEST_F(CudaKernelsTest, MatVecAccumulates) {
  const int64_t n_out = 33, n_in = 256, n_tokens = 2;
  const std::vector<uint8_t> w = RandomWeights(DType::kQ4_0, n_out, n_in, 71);
  const std::vector<float> x = RandomVector(n_tokens * n_in, 72);
  std::vector<uint8_t> xq(n_tokens * ActRowBytes(ActFormat::kQ8_1, n_in));
  QuantizeActivations(xq.data(), ActFormat::kQ8_1, x.data(), n_in, n_tokens, 0, 1);
  const std::vector<float> y0 = RandomVector(n_tokens * n_out, 73);
  DeviceArray<uint8_t> d_w(w), d_a(xq);
  DeviceArray<float> d_y(y0);
  PDS_CUDA_OK(cuda::MatVec(d_y.get(), n_out, d_w.get(), DType::kQ4_0, n_out, n_in, d_a.get(),
                           n_tokens, true, nullptr));
  std::vector<float> ref(n_tokens * n_out);
  MatMulQuantRef(ref.data(), n_out, WeightMatrix{w.data(), DType::kQ4_0, n_out, n_in}, xq.data(),
                 n_tokens);
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += y0[i];
  EXPECT_LT(Nmse(d_y.Download().data(), ref.data(), ref.size()), 1e-10);
}

// The integer path's edges (kernels/cuda/matvec.cu): output rows that fill
// neither a warp's task of 4 nor a thread block's 16; rows of one or two
// blocks, of a partial last group (384: 12 blocks, Q4_1 rows still 16-byte
// aligned), and 4128 and 14336 inputs (a chunk of one block after whole
// chunks; 3.5 chunks, in four activation tiles at 5-8 tokens) with rows
// that are and are not 16-byte aligned; every token count; accumulate on
// and off.
TEST_F(CudaKernelsTest, MatVecQ8EdgeShapesMatchCpu) {
  for (DType type : {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0}) {
    for (int64_t n_in : {32, 64, 384, 4096 + 32, 14336}) {
      const int64_t n_out = n_in >= 4096 ? 21 : 37;
      const std::vector<uint8_t> w = RandomWeights(type, n_out, n_in, 91);
      DeviceArray<uint8_t> d_w(w);
      const WeightMatrix wm{w.data(), type, n_out, n_in};
      for (int64_t n_tokens = 1; n_tokens <= cuda::kMaxMatVecTokens; ++n_tokens) {
        const bool accumulate = n_tokens % 2 == 0;
        SCOPED_TRACE(std::string(GetDType(type).name) + " n_in " + std::to_string(n_in) +
                     " tokens " + std::to_string(n_tokens) + (accumulate ? " accumulate" : ""));
        const std::vector<float> x =
            RandomVector(n_tokens * n_in, 92 + static_cast<uint32_t>(n_tokens));
        std::vector<uint8_t> xq(n_tokens * ActRowBytes(ActFormat::kQ8_1, n_in));
        QuantizeActivations(xq.data(), ActFormat::kQ8_1, x.data(), n_in, n_tokens, 0, 1);
        const int64_t ld = n_out + 5;
        const std::vector<float> y0 = RandomVector(n_tokens * ld, 93);
        std::vector<float> ref(n_tokens * ld, 0.0f);
        MatMulQuantRef(ref.data(), ld, wm, xq.data(), n_tokens);
        DeviceArray<uint8_t> d_a(xq);
        DeviceArray<float> d_y(y0);
        if (!accumulate) d_y.Poison();
        PDS_CUDA_OK(cuda::MatVec(d_y.get(), ld, d_w.get(), type, n_out, n_in, d_a.get(), n_tokens,
                                 accumulate, nullptr));
        const std::vector<float> got = d_y.Download();
        for (int64_t t = 0; t < n_tokens; ++t) {
          std::vector<float> want(ref.begin() + t * ld, ref.begin() + t * ld + n_out);
          if (accumulate) {
            for (int64_t r = 0; r < n_out; ++r) want[r] += y0[t * ld + r];
          }
          EXPECT_LT(Nmse(&got[t * ld], want.data(), n_out), 1e-10) << "token " << t;
          // The padding between rows of y is never written.
          for (int64_t r = n_out; r < ld; ++r) {
            if (accumulate) {
              ASSERT_EQ(got[t * ld + r], y0[t * ld + r]) << "token " << t << " pad " << r;
            } else {
              ASSERT_TRUE(std::isnan(got[t * ld + r])) << "token " << t << " pad " << r;
            }
          }
        }
      }
    }
  }
}

// More rows than the grid has warps at once (the emulation has 4 SMs): the
// warps loop over several tasks each, with every token count.
TEST_F(CudaKernelsTest, MatVecQ8ManyRowsMatchCpu) {
  const int64_t n_out = 2053, n_in = 64;
  for (DType type : {DType::kQ4_0, DType::kQ8_0}) {
    const std::vector<uint8_t> w = RandomWeights(type, n_out, n_in, 95);
    DeviceArray<uint8_t> d_w(w);
    for (int64_t n_tokens : {1, 4, 8}) {
      SCOPED_TRACE(std::string(GetDType(type).name) + " tokens " + std::to_string(n_tokens));
      const std::vector<float> x = RandomVector(n_tokens * n_in, 96);
      std::vector<uint8_t> xq(n_tokens * ActRowBytes(ActFormat::kQ8_1, n_in));
      QuantizeActivations(xq.data(), ActFormat::kQ8_1, x.data(), n_in, n_tokens, 0, 1);
      std::vector<float> ref(n_tokens * n_out);
      MatMulQuantRef(ref.data(), n_out, WeightMatrix{w.data(), type, n_out, n_in}, xq.data(),
                     n_tokens);
      DeviceArray<uint8_t> d_a(xq);
      DeviceArray<float> d_y(n_tokens * n_out);
      d_y.Poison();
      PDS_CUDA_OK(cuda::MatVec(d_y.get(), n_out, d_w.get(), type, n_out, n_in, d_a.get(), n_tokens,
                               false, nullptr));
      EXPECT_LT(Nmse(d_y.Download().data(), ref.data(), ref.size()), 1e-10);
    }
  }
}

TEST_F(CudaKernelsTest, GemmF16MatchesReference) {
  const int64_t n_out = 96, n_in = 320, n_tokens = 37;
  const std::vector<uint8_t> w = RandomWeights(DType::kQ4_0, n_out, n_in, 81);
  const std::vector<float> x = RandomVector(n_tokens * n_in, 82);
  DeviceArray<uint8_t> d_w(w);
  DeviceArray<__half> d_wh(n_out * n_in), d_xh(n_tokens * n_in);
  PDS_CUDA_OK(cuda::DequantizeToF16(d_wh.get(), d_w.get(), DType::kQ4_0, n_out, n_in, nullptr));
  // Activations to f16 through the encoding kernel (no rounding).
  DeviceArray<float> d_x(x);
  cuda::ActOutputs out;
  out.f16 = d_xh.get();
  cuda::ActSource src;
  src.x = d_x.get();
  src.ldx = n_in;
  PDS_CUDA_OK(cuda::PrepareActivations(out, src, n_tokens, n_in, nullptr));

  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const int64_t ld = n_out + 5;
  std::vector<float> y0 = RandomVector(n_tokens * ld, 83);
  DeviceArray<float> d_y(y0);
  ASSERT_EQ(cuda::GemmF16(handle, d_y.get(), ld, d_wh.get(), n_out, n_in, d_xh.get(), n_tokens,
                          false, nullptr),
            CUBLAS_STATUS_SUCCESS);
  std::vector<float> got = d_y.Download();
  d_y.Upload(y0);
  ASSERT_EQ(cuda::GemmF16(handle, d_y.get(), ld, d_wh.get(), n_out, n_in, d_xh.get(), n_tokens,
                          true, nullptr),
            CUBLAS_STATUS_SUCCESS);
  std::vector<float> got_acc = d_y.Download();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cublasDestroy(handle);

  // Exact reference on the f16-rounded operands, and the float one.
  std::vector<float> xr(x.size());
  for (size_t i = 0; i < x.size(); ++i) xr[i] = F16ToF32(F32ToF16(x[i]));
  std::vector<float> wrow(n_in);
  std::vector<float> ref(n_tokens * n_out), ref_f(n_tokens * n_out), g(n_tokens * n_out),
      ga(n_tokens * n_out), ref_acc(n_tokens * n_out);
  const WeightMatrix wm{w.data(), DType::kQ4_0, n_out, n_in};
  MatMulRef(ref_f.data(), n_out, wm, x.data(), n_tokens);
  for (int64_t r = 0; r < n_out; ++r) {
    DequantizeRow(wrow.data(), w.data() + r * RowBytes(DType::kQ4_0, n_in), DType::kQ4_0, n_in);
    for (float& v : wrow) v = F16ToF32(F32ToF16(v));
    for (int64_t t = 0; t < n_tokens; ++t) {
      double acc = 0;
      for (int64_t k = 0; k < n_in; ++k) acc += static_cast<double>(wrow[k]) * xr[t * n_in + k];
      ref[t * n_out + r] = static_cast<float>(acc);
      ref_acc[t * n_out + r] = static_cast<float>(acc + y0[t * ld + r]);
      g[t * n_out + r] = got[t * ld + r];
      ga[t * n_out + r] = got_acc[t * ld + r];
    }
  }
  EXPECT_LT(Nmse(g.data(), ref.data(), g.size()), 1e-10);
  EXPECT_LT(Nmse(g.data(), ref_f.data(), g.size()), 1e-5);
  EXPECT_LT(Nmse(ga.data(), ref_acc.data(), ga.size()), 1e-10);
  // Padding columns of y (r >= n_out) are left alone.
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = n_out; r < ld; ++r) ASSERT_EQ(got[t * ld + r], y0[t * ld + r]);
  }
}

// A small paged cache with shuffled block tables, shared by the KV tests.
struct PagedFixture {
  KvLayerView kv;  // host view (base = host storage)
  std::vector<uint8_t> host;
  std::vector<AttnSeq> seqs;  // host block tables
  std::vector<std::vector<int32_t>> tables;
  int32_t n_rows = 0;

  PagedFixture(DType kv_type, int n_kv_heads, int head_dim, int block_size,
               const std::vector<std::pair<int32_t, int32_t>>& past_new, uint32_t seed) {
    kv.kv_type = kv_type;
    kv.block_size = block_size;
    kv.n_kv_heads = n_kv_heads;
    kv.head_dim = head_dim;
    int32_t n_blocks = 0;
    for (auto [past, add] : past_new) n_blocks += (past + add + block_size - 1) / block_size;
    n_blocks += 3;  // unused blocks
    host.resize(n_blocks * kv.BlockBytes());
    std::mt19937 rng(seed);
    std::vector<int32_t> ids(n_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    kv.base = host.data();
    // Random cached prefixes.
    const std::vector<float> fill = RandomVector(host.size() / kv.ElemBytes(), seed + 1);
    for (size_t i = 0; i < fill.size(); ++i) {
      if (kv_type == DType::kF16) {
        const uint16_t h = F32ToF16(fill[i]);
        std::memcpy(&host[2 * i], &h, 2);
      } else {
        std::memcpy(&host[4 * i], &fill[i], 4);
      }
    }
    size_t next = 0;
    for (auto [past, add] : past_new) {
      std::vector<int32_t> t;
      for (int32_t b = 0; b < (past + add + block_size - 1) / block_size; ++b)
        t.push_back(ids[next++]);
      tables.push_back(std::move(t));
      AttnSeq s;
      s.n_past = past;
      s.n_new = add;
      s.row0 = n_rows;
      n_rows += add;
      seqs.push_back(s);
    }
    for (size_t s = 0; s < seqs.size(); ++s) seqs[s].block_table = tables[s].data();
  }
  int64_t Slot(const AttnSeq& s, size_t si, int32_t i) const {
    const int32_t p = s.n_past + i;
    return static_cast<int64_t>(tables[si][p / kv.block_size]) * kv.block_size + p % kv.block_size;
  }
};

TEST_F(CudaKernelsTest, RopeStoreKvMatchesCpu) {
  for (DType kv_type : {DType::kF16, DType::kF32}) {
    SCOPED_TRACE(GetDType(kv_type).name);
    const int n_heads = 8, n_kv_heads = 2, head_dim = 64, n_rot = 64, n_pos = 64;
    PagedFixture f(kv_type, n_kv_heads, head_dim, 16, {{0, 5}, {17, 1}, {30, 9}}, 91);
    const int64_t qd = n_heads * head_dim, kvd = n_kv_heads * head_dim, ld = qd + 2 * kvd;
    std::vector<float> qkv = RandomVector(f.n_rows * ld, 92);
    std::vector<float> cs = RandomVector(n_pos * n_rot, 93);
    std::vector<int32_t> pos;
    std::vector<int64_t> slots;
    for (size_t s = 0; s < f.seqs.size(); ++s) {
      for (int32_t i = 0; i < f.seqs[s].n_new; ++i) {
        pos.push_back(f.seqs[s].n_past + i);
        slots.push_back(f.Slot(f.seqs[s], s, i));
      }
    }
    DeviceArray<float> d_qkv(qkv), d_cs(cs);
    DeviceArray<int32_t> d_pos(pos);
    DeviceArray<int64_t> d_slots(slots);
    DeviceArray<uint8_t> d_cache(f.host);
    KvLayerView dkv = f.kv;
    dkv.base = d_cache.get();
    PDS_CUDA_OK(cuda::RopeStoreKv(d_qkv.get(), ld, d_qkv.get() + qd, d_qkv.get() + qd + kvd, ld,
                                  dkv, d_pos.get(), d_slots.get(), d_cs.get(), f.n_rows, n_heads,
                                  n_rot, nullptr));
    // CPU: the forward pass's RoPE then StoreKv.
    for (int32_t r = 0; r < f.n_rows; ++r) {
      Rope(&qkv[r * ld], n_heads, head_dim, n_rot, &cs[pos[r] * n_rot]);
      Rope(&qkv[r * ld + qd], n_kv_heads, head_dim, n_rot, &cs[pos[r] * n_rot]);
    }
    for (size_t s = 0; s < f.seqs.size(); ++s) {
      StoreKv(f.kv, f.seqs[s], &qkv[f.seqs[s].row0 * ld + qd], &qkv[f.seqs[s].row0 * ld + qd + kvd],
              ld);
    }
    EXPECT_EQ(d_cache.Download(), f.host);
    const std::vector<float> got = d_qkv.Download();
    for (int32_t r = 0; r < f.n_rows; ++r) {
      for (int64_t c = 0; c < qd; ++c) ASSERT_EQ(got[r * ld + c], qkv[r * ld + c]);
    }
  }
}

// Plans the fixture's batch for n_sm multiprocessors (force_chunk > 0: every
// row a chunk-kernel item of that chunk length instead), runs PagedAttention
// and compares with the CPU reference. The plan it ran goes to *ran.
void RunAttention(const PagedFixture& f, int n_heads, int32_t max_partials, int32_t force_chunk,
                  double tolerance, int n_sm = 132, cuda::AttnPlan* ran = nullptr) {
  const int head_dim = f.kv.head_dim;
  const int64_t qd = static_cast<int64_t>(n_heads) * head_dim, ldq = qd + 7;
  const std::vector<float> q = RandomVector(f.n_rows * ldq, 101);
  std::vector<float> ref(f.n_rows * qd);
  PagedAttentionRef(ref.data(), qd, q.data(), ldq, f.kv, f.seqs.data(),
                    static_cast<int>(f.seqs.size()), n_heads, 0.125f);

  cuda::AttnPlan plan;
  const int group = n_heads / f.kv.n_kv_heads;
  ASSERT_TRUE(cuda::PlanAttention(f.seqs.data(), static_cast<int>(f.seqs.size()), group, head_dim,
                                  f.kv.n_kv_heads, n_sm, max_partials, &plan));
  if (force_chunk > 0) {  // rebuild with a given chunk: many splits
    cuda::AttnPlan forced;
    forced.chunk = force_chunk;
    for (size_t s = 0; s < f.seqs.size(); ++s) {
      for (int32_t i = 0; i < f.seqs[s].n_new; ++i) {
        const int32_t n = (f.seqs[s].n_past + i + 1 + force_chunk - 1) / force_chunk;
        if (n == 1) {
          forced.items.push_back({static_cast<int32_t>(s), i, 0, -1});
          continue;
        }
        forced.split_rows.push_back({f.seqs[s].row0 + i, n, forced.n_partials});
        for (int32_t c = 0; c < n; ++c) {
          forced.items.push_back({static_cast<int32_t>(s), i, c, forced.n_partials + c});
        }
        forced.n_partials += n;
      }
    }
    plan = forced;
  }
  DeviceArray<uint8_t> d_cache(f.host);
  KvLayerView dkv = f.kv;
  dkv.base = d_cache.get();
  std::vector<DeviceArray<int32_t>*> d_tables;
  std::vector<AttnSeq> dseqs = f.seqs;
  for (size_t s = 0; s < f.seqs.size(); ++s) {
    d_tables.push_back(new DeviceArray<int32_t>(f.tables[s]));
    dseqs[s].block_table = d_tables.back()->get();
  }
  DeviceArray<uint8_t> d_seqs(dseqs.size() * sizeof(AttnSeq));
  ASSERT_EQ(cudaMemcpy(d_seqs.get(), dseqs.data(), d_seqs.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  DeviceArray<uint8_t> d_items(std::max<size_t>(1, plan.items.size()) * sizeof(cuda::AttnWorkItem));
  ASSERT_EQ(cudaMemcpy(d_items.get(), plan.items.data(),
                       plan.items.size() * sizeof(cuda::AttnWorkItem), cudaMemcpyHostToDevice),
            cudaSuccess);
  DeviceArray<uint8_t> d_tiles(std::max<size_t>(1, plan.tiles.size()) * sizeof(cuda::AttnTile));
  if (!plan.tiles.empty()) {
    ASSERT_EQ(cudaMemcpy(d_tiles.get(), plan.tiles.data(),
                         plan.tiles.size() * sizeof(cuda::AttnTile), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  DeviceArray<uint8_t> d_split(std::max<size_t>(1, plan.split_rows.size()) *
                               sizeof(cuda::AttnSplitRow));
  if (!plan.split_rows.empty()) {
    ASSERT_EQ(
        cudaMemcpy(d_split.get(), plan.split_rows.data(),
                   plan.split_rows.size() * sizeof(cuda::AttnSplitRow), cudaMemcpyHostToDevice),
        cudaSuccess);
  }
  DeviceArray<float> d_part(std::max<int64_t>(1, plan.n_partials) *
                            cuda::AttnPartialFloats(n_heads, head_dim));
  DeviceArray<float> d_q(q), d_out(f.n_rows * qd);
  d_out.Poison();
  PDS_CUDA_OK(cuda::PagedAttention(d_out.get(), qd, d_q.get(), ldq, dkv,
                                   reinterpret_cast<const AttnSeq*>(d_seqs.get()),
                                   reinterpret_cast<const cuda::AttnWorkItem*>(d_items.get()),
                                   static_cast<int32_t>(plan.items.size()),
                                   reinterpret_cast<const cuda::AttnTile*>(d_tiles.get()),
                                   static_cast<int32_t>(plan.tiles.size()),
                                   reinterpret_cast<const cuda::AttnSplitRow*>(d_split.get()),
                                   static_cast<int32_t>(plan.split_rows.size()), plan.chunk,
                                   d_part.get(), n_heads, 0.125f, nullptr));
  const std::vector<float> got = d_out.Download();
  for (auto* t : d_tables) delete t;
  ASSERT_TRUE(Finite(got));
  EXPECT_LT(Nmse(got.data(), ref.data(), got.size()), tolerance);
  if (ran != nullptr) *ran = plan;
}

TEST_F(CudaKernelsTest, PagedAttentionPrefillAndDecodeMatchReference) {
  // Prefill from scratch, prefill after a cached prefix, decode rows.
  for (DType kv_type : {DType::kF16, DType::kF32}) {
    SCOPED_TRACE(GetDType(kv_type).name);
    PagedFixture f(kv_type, 2, 64, 16, {{0, 11}, {40, 6}, {70, 1}, {3, 1}}, 111);
    RunAttention(f, 6, 4096, 0, 1e-10);
  }
}

TEST_F(CudaKernelsTest, PagedAttentionSplitsLongContexts) {
  // Contexts of several chunks: the combine kernel merges partial results.
  PagedFixture f(DType::kF16, 2, 128, 16, {{300, 2}, {129, 1}, {0, 3}}, 121);
  RunAttention(f, 8, 4096, 64, 1e-10);
  RunAttention(f, 8, 4096, 0, 1e-10);
}

// Tiled prefill attention (AttnTileKernel) across the shapes it takes:
// group 1, 3 and 4, head_dim 64 and 128, f16 and f32 KV.
struct TileShape {
  int group, n_kv_heads, head_dim;
};
const TileShape kTileShapes[] = {{1, 2, 64},  {3, 3, 64},  {4, 2, 64},
                                 {1, 2, 128}, {3, 1, 128}, {4, 2, 128}};

TEST_F(CudaKernelsTest, PagedAttentionTiledPrefillMatchesReference) {
  // Prompts around the tile's 16 rows (group 4), 21 (group 3) and 64
  // (group 1), and past a 64-key tile; 1 token is a chunk-kernel row.
  for (const TileShape& t : kTileShapes) {
    for (DType kv_type : {DType::kF16, DType::kF32}) {
      for (int32_t n_new : {1, 15, 16, 17, 100, 300}) {
        // The emulation is slow: 300 tokens for two shapes, one KV type each.
        if (n_new == 300 && !(t.group == 3 && kv_type == DType::kF16) &&
            !(t.group == 4 && t.head_dim == 128 && kv_type == DType::kF32)) {
          continue;
        }
        SCOPED_TRACE(::testing::Message() << "group " << t.group << " head_dim " << t.head_dim
                                          << " " << GetDType(kv_type).name << " n_new " << n_new);
        PagedFixture f(kv_type, t.n_kv_heads, t.head_dim, 16, {{0, n_new}}, 141 + n_new);
        cuda::AttnPlan plan;
        // One SM: whole contexts per tile; 132: prompts past 128 tokens split.
        for (int n_sm : {1, 132}) {
          if (n_sm == 1 && n_new <= 128) continue;  // the same plan
          RunAttention(f, t.group * t.n_kv_heads, 4096, 0, 1e-10, n_sm, &plan);
          EXPECT_EQ(plan.tiles.empty(), n_new < cuda::kMinTiledRows);
          EXPECT_EQ(plan.tile_chunk > 0, n_sm == 132 && n_new > 128);
        }
      }
    }
  }
}

TEST_F(CudaKernelsTest, PagedAttentionTiledAfterCachedPrefix) {
  // A chunked prefill continuing a cached prefix; a few tokens after a long
  // prefix (tiles cut into key ranges, rows straddling a range boundary).
  for (const TileShape& t : kTileShapes) {
    for (DType kv_type : {DType::kF16, DType::kF32}) {
      SCOPED_TRACE(::testing::Message() << "group " << t.group << " head_dim " << t.head_dim << " "
                                        << GetDType(kv_type).name);
      PagedFixture f(kv_type, t.n_kv_heads, t.head_dim, 16, {{37, 50}}, 151);
      RunAttention(f, t.group * t.n_kv_heads, 4096, 0, 1e-10);
      PagedFixture g(kv_type, t.n_kv_heads, t.head_dim, 16, {{120, 20}, {400, 9}}, 152);
      cuda::AttnPlan plan;
      RunAttention(g, t.group * t.n_kv_heads, 4096, 0, 1e-10, 132, &plan);
      EXPECT_EQ(plan.tile_chunk, 128);
      EXPECT_TRUE(plan.items.empty());
    }
  }
}

TEST_F(CudaKernelsTest, PagedAttentionMixesTilesAndDecodeRows) {
  // Prefills (tiles) and decode rows (chunk-kernel items) in one batch; head
  // dim 96 leaves a quarter of the tile kernel's float4 columns idle.
  for (const TileShape& t : {kTileShapes[1], kTileShapes[5], TileShape{2, 2, 96}}) {
    for (DType kv_type : {DType::kF16, DType::kF32}) {
      SCOPED_TRACE(::testing::Message() << "group " << t.group << " head_dim " << t.head_dim << " "
                                        << GetDType(kv_type).name);
      PagedFixture f(kv_type, t.n_kv_heads, t.head_dim, 16,
                     {{0, 40}, {70, 1}, {37, 50}, {3, 1}, {0, 5}, {130, 9}, {300, 1}}, 161);
      cuda::AttnPlan plan;
      for (int n_sm : {1, 132}) {
        RunAttention(f, t.group * t.n_kv_heads, 4096, 0, 1e-10, n_sm, &plan);
        EXPECT_FALSE(plan.tiles.empty());
        EXPECT_FALSE(plan.items.empty());
      }
    }
  }
}

TEST(CudaAttentionPlanTest, CoversEveryPositionOnce) {
  std::vector<AttnSeq> seqs(5);
  seqs[0].n_past = 1000, seqs[0].n_new = 1, seqs[0].row0 = 0;
  seqs[1].n_past = 0, seqs[1].n_new = 200, seqs[1].row0 = 1;  // tiles
  seqs[2].n_past = 5000, seqs[2].n_new = 2, seqs[2].row0 = 201;
  seqs[3].n_past = 3000, seqs[3].n_new = 9, seqs[3].row0 = 203;  // tiles, split when few
  seqs[4].n_past = 100, seqs[4].n_new = 7, seqs[4].row0 = 212;   // below kMinTiledRows
  const int32_t n_rows = 219;
  for (int n_sm : {132, 4}) {
    for (int32_t max_partials : {100000, 20000, 5}) {
      SCOPED_TRACE(::testing::Message() << "n_sm " << n_sm << " max_partials " << max_partials);
      cuda::AttnPlan plan;
      const bool ok = cuda::PlanAttention(seqs.data(), 5, 4, 128, 8, n_sm, max_partials, &plan);
      if (max_partials == 5) {
        EXPECT_FALSE(ok);  // even the longest chunk splits 5000 positions
        continue;
      }
      ASSERT_TRUE(ok);
      EXPECT_GE(plan.chunk, 64);
      EXPECT_LE(plan.chunk, cuda::MaxAttnChunk(4, 128));
      EXPECT_LE(plan.n_partials, max_partials);
      EXPECT_EQ(plan.tile_chunk > 0, n_sm == 132);  // 14 tiles · 8 KV heads cover 4 SMs
      // Each row's positions are covered once, by items or by tiles; each
      // partial slot is written once, by the row whose split entry names it.
      std::vector<int64_t> covered(n_rows, 0);
      std::vector<int> slot_row(plan.n_partials, -1), writes(plan.n_partials, 0);
      for (const cuda::AttnWorkItem& it : plan.items) {
        const AttnSeq& s = seqs[it.seq];
        EXPECT_LT(s.n_new, cuda::kMinTiledRows);
        const int32_t ctx = s.n_past + it.i + 1;
        ASSERT_LT(it.chunk * plan.chunk, ctx);
        covered[s.row0 + it.i] +=
            std::min(ctx, (it.chunk + 1) * plan.chunk) - it.chunk * plan.chunk;
        if (it.partial >= 0) {
          ++writes[it.partial];
          slot_row[it.partial] = s.row0 + it.i;
        }
      }
      for (size_t k = 0; k < plan.tiles.size(); ++k) {
        const cuda::AttnTile& t = plan.tiles[k];
        const AttnSeq& s = seqs[t.seq];
        EXPECT_GE(s.n_new, cuda::kMinTiledRows);
        ASSERT_LE(t.n_rows, cuda::AttnTileRows(4));
        ASSERT_LE(t.key1, s.n_past + t.i0 + t.n_rows);
        if (k > 0) {  // longest key range first
          EXPECT_GE(plan.tiles[k - 1].key1 - plan.tiles[k - 1].key0, t.key1 - t.key0);
        }
        for (int32_t r = 0; r < t.n_rows; ++r) {
          const int32_t pos = s.n_past + t.i0 + r;
          if (t.key0 > pos) continue;
          covered[s.row0 + t.i0 + r] += std::min(t.key1, pos + 1) - t.key0;
          if (t.partial >= 0) {
            const int32_t slot = t.partial + r * t.n_chunks;
            ASSERT_LT(slot, plan.n_partials);
            ++writes[slot];
            slot_row[slot] = s.row0 + t.i0 + r;
          }
        }
      }
      for (const AttnSeq& s : seqs) {
        for (int32_t i = 0; i < s.n_new; ++i) EXPECT_EQ(covered[s.row0 + i], s.n_past + i + 1);
      }
      int64_t named = 0;
      for (const cuda::AttnSplitRow& sr : plan.split_rows) {
        for (int32_t c = 0; c < sr.n_chunks; ++c) {
          EXPECT_EQ(slot_row[sr.partial0 + c], sr.row);
          EXPECT_EQ(writes[sr.partial0 + c], 1);
        }
        named += sr.n_chunks;
      }
      int64_t written = 0;
      for (int w : writes) written += w;
      EXPECT_EQ(written, named);
    }
  }
}

// Spans of different sizes and alignments (16-byte and byte paths), in one
// launch, into a poisoned pool: each lands where it should and nothing else
// is written.
TEST_F(CudaKernelsTest, CopySpansMovesEverySpanAndNothingElse) {
  const int64_t pool_bytes = 1 << 16;
  std::vector<uint8_t> src(pool_bytes);
  std::mt19937 rng(17);
  for (uint8_t& b : src) b = static_cast<uint8_t>(rng());
  DeviceArray<uint8_t> d_src(src), d_dst(pool_bytes);
  PDS_CUDA_OK(cudaMemset(d_dst.get(), 0xAB, pool_bytes));
  // (src offset, dst offset, bytes)
  const std::vector<std::array<int64_t, 3>> plan = {{0, 8192, 4096},      {4096, 0, 4096},
                                                    {20000, 30000, 1000}, {13, 40001, 77},
                                                    {50000, 60000, 1},    {32768, 12288, 16384}};
  std::vector<cuda::CopySpan> spans;
  int64_t widest = 0;
  for (const auto& [so, dof, n] : plan) {
    spans.push_back({d_src.get() + so, d_dst.get() + dof, n});
    widest = std::max(widest, n);
  }
  DeviceArray<uint8_t> d_spans(spans.size() * sizeof(cuda::CopySpan));
  PDS_CUDA_OK(cudaMemcpy(d_spans.get(), spans.data(), spans.size() * sizeof(cuda::CopySpan),
                         cudaMemcpyHostToDevice));
  PDS_CUDA_OK(cuda::CopySpans(reinterpret_cast<const cuda::CopySpan*>(d_spans.get()),
                              static_cast<int64_t>(spans.size()), widest, nullptr));
  const std::vector<uint8_t> got = d_dst.Download();
  std::vector<uint8_t> want(pool_bytes, 0xAB);
  for (const auto& [so, dof, n] : plan) std::memcpy(&want[dof], &src[so], n);
  EXPECT_EQ(got, want);
  EXPECT_EQ(cuda::CopySpans(nullptr, 0, 0, nullptr), cudaSuccess);
  EXPECT_EQ(cuda::CopySpans(nullptr, -1, 16, nullptr), cudaErrorInvalidValue);
}

TEST_F(CudaKernelsTest, GatherScatterBlocksRoundTrip) {
  for (int64_t block_bytes : {int64_t{4096}, int64_t{1000}}) {
    const int64_t n_pool = 12, n = 5;
    std::vector<uint8_t> pool(n_pool * block_bytes);
    std::mt19937 rng(131);
    for (uint8_t& b : pool) b = static_cast<uint8_t>(rng());
    DeviceArray<uint8_t> d_pool(pool), d_staging(n * block_bytes), d_pool2(n_pool * block_bytes);
    const std::vector<int> pick = {7, 0, 11, 3, 4};
    std::vector<uint8_t*> src(n), dst(n);
    for (int64_t i = 0; i < n; ++i) {
      src[i] = d_pool.get() + pick[i] * block_bytes;
      dst[i] = d_pool2.get() + pick[i] * block_bytes;
    }
    DeviceArray<uint8_t*> d_src(src), d_dst(dst);
    PDS_CUDA_OK(cuda::GatherBlocks(d_staging.get(),
                                   reinterpret_cast<const void* const*>(d_src.get()), block_bytes,
                                   n, nullptr));
    const std::vector<uint8_t> staging = d_staging.Download();
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(0,
                std::memcmp(&staging[i * block_bytes], &pool[pick[i] * block_bytes], block_bytes));
    }
    d_pool2.Poison();
    PDS_CUDA_OK(cuda::ScatterBlocks(reinterpret_cast<void* const*>(d_dst.get()), d_staging.get(),
                                    block_bytes, n, nullptr));
    const std::vector<uint8_t> back = d_pool2.Download();
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(
          0, std::memcmp(&back[pick[i] * block_bytes], &pool[pick[i] * block_bytes], block_bytes));
    }
  }
}

#ifdef PDS_CUDA_EMU
// The emulation refuses a launch with more than 48 KiB of dynamic shared
// memory unless the kernel's limit was raised, as a GPU does (which is what
// would catch a kernel missing its cudaFuncSetAttribute only on a device).
__global__ void TouchDynamicSmem(int* out) {
  PDS_DYNAMIC_SMEM(int, smem);
  smem[threadIdx.x] = static_cast<int>(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = smem[31];
}

TEST(CudaEmulationTest, DynamicSharedMemoryOver48KiBNeedsTheAttribute) {
  DeviceArray<int> out(1);
  cudaGetLastError();
  PDS_LAUNCH(dim3(1), dim3(32), 64 << 10, nullptr, TouchDynamicSmem)(out.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  PDS_LAUNCH(dim3(1), dim3(32), 48 << 10, nullptr, TouchDynamicSmem)(out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaFuncSetAttribute(TouchDynamicSmem, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 300 << 10),
            cudaErrorInvalidValue);
  ASSERT_EQ(
      cudaFuncSetAttribute(TouchDynamicSmem, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10),
      cudaSuccess);
  PDS_LAUNCH(dim3(1), dim3(32), 64 << 10, nullptr, TouchDynamicSmem)(out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(out.Download()[0], 31);
}
#endif

}  // namespace
}  // namespace pdserve::kernels
