// The engine's GGUF reader and block dequantization against an independent
// implementation: tests/data/reference/quants/quants.gguf was written by the
// `gguf` Python package (GGUFWriter) with blocks from gguf.quants.quantize
// and blocks of random bytes, each next to gguf.quants.dequantize's output.
// Regenerate with tools/make_quant_reference.py.
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/gguf/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"

namespace pdserve::gguf {
namespace {

using kernels::DType;

constexpr char kFixture[] = PDSERVE_TESTDATA_DIR "/reference/quants/quants.gguf";

std::unique_ptr<GgufFile> OpenFixture() {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(kFixture);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(f).value() : nullptr;
}

// Types whose blocks kernels::DequantizeRow decodes.
bool EngineDecodes(DType t) { return kernels::GetDType(t).matmul || t == DType::kBF16; }

TEST(GgufPyWriter, MetadataOfEveryValueTypeReadsBack) {
  std::unique_ptr<GgufFile> f = OpenFixture();
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(*f->GetString("general.architecture"), "quantref");
  EXPECT_EQ(f->Find("quantref.u8")->type(), ValueType::kUint8);
  EXPECT_EQ(*f->GetUint("quantref.u8"), 200u);
  EXPECT_EQ(f->Find("quantref.i8")->type(), ValueType::kInt8);
  EXPECT_EQ(*f->GetInt("quantref.i8"), -100);
  EXPECT_EQ(*f->GetUint("quantref.u16"), 60000u);
  EXPECT_EQ(*f->GetInt("quantref.i16"), -30000);
  EXPECT_EQ(*f->GetUint("quantref.u32"), 4000000000u);
  EXPECT_EQ(*f->GetInt("quantref.i32"), -2000000000);
  EXPECT_EQ(f->Find("quantref.u64")->type(), ValueType::kUint64);
  EXPECT_EQ(*f->GetUint("quantref.u64"), uint64_t{1} << 40);
  EXPECT_EQ(*f->GetInt("quantref.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(f->Find("quantref.f32")->type(), ValueType::kFloat32);
  EXPECT_EQ(*f->GetFloat("quantref.f32"), 0.15625);
  EXPECT_EQ(f->Find("quantref.f64")->type(), ValueType::kFloat64);
  EXPECT_EQ(*f->GetFloat("quantref.f64"), -2.5e-300);
  EXPECT_EQ(*f->GetBool("quantref.bool"), true);
  EXPECT_EQ(*f->GetString("quantref.str"),
            "gguf-py \xc3\xa9"
            "crit \xe2\x9c\x93");
  EXPECT_THAT(*f->GetStringArray("quantref.strs"),
              ::testing::ElementsAre("a", "", "\xe4\xb8\xad\xe6\x96\x87"));
  EXPECT_THAT(*f->GetIntArray("quantref.ints"), ::testing::ElementsAre(1, -2, 3));
  // A wrong type is an error naming the key, not a crash.
  absl::StatusOr<std::string_view> not_string = f->GetString("quantref.u32");
  EXPECT_FALSE(not_string.ok());
  EXPECT_THAT(std::string(not_string.status().message()), ::testing::HasSubstr("quantref.u32"));
}

TEST(GgufPyWriter, TensorTableMatchesWhatGgufPyWrote) {
  std::unique_ptr<GgufFile> f = OpenFixture();
  ASSERT_NE(f, nullptr);
  // 7 quantized + 12 random block tensors, each with its expected output.
  EXPECT_EQ(f->tensors().size(), 2u * (7 + 12));
  for (const TensorInfo& t : f->tensors()) {
    SCOPED_TRACE(std::string(t.name));
    EXPECT_THAT(t.dims, ::testing::ElementsAre(256, 4));  // numpy (4, 256), fastest first
    EXPECT_EQ(t.n_elements, 1024);
    EXPECT_EQ(t.n_bytes, kernels::RowBytes(t.type, 256) * 4);
    EXPECT_EQ(t.offset % f->alignment(), 0u);
    if (t.name.ends_with(".expected")) {
      EXPECT_EQ(t.type, DType::kF32);
    }
  }
}

// Every block tensor of a type the engine decodes must dequantize to
// gguf-py's floats bit for bit. Both sides compute each element as a short
// float expression (e.g. d * sc * q - dmin * m) in the same order, so any
// difference is a misread layout, not rounding.
TEST(GgufPyDequantize, EveryEngineTypeMatchesGgufPyExactly) {
  std::unique_ptr<GgufFile> f = OpenFixture();
  ASSERT_NE(f, nullptr);
  std::set<std::string> checked;
  for (const TensorInfo& t : f->tensors()) {
    if (t.name.ends_with(".expected")) continue;
    const std::string name(t.name);
    SCOPED_TRACE(name);
    const TensorInfo* want = f->FindTensor(name + ".expected");
    ASSERT_NE(want, nullptr);
    if (!EngineDecodes(t.type)) continue;
    checked.insert(name);
    const int64_t row_bytes = kernels::RowBytes(t.type, t.dims[0]);
    std::vector<float> got(t.dims[0]), expected(t.dims[0]);
    int mismatches = 0;
    for (int64_t r = 0; r < t.dims[1]; ++r) {
      kernels::DequantizeRow(got.data(), t.data + r * row_bytes, t.type, t.dims[0]);
      std::memcpy(expected.data(), want->data + r * t.dims[0] * sizeof(float),
                  t.dims[0] * sizeof(float));
      for (int64_t i = 0; i < t.dims[0]; ++i) {
        if (got[i] != expected[i] && mismatches++ < 5) {
          ADD_FAILURE() << name << " row " << r << " element " << i << ": engine " << got[i]
                        << ", gguf-py " << expected[i];
        }
      }
    }
    EXPECT_EQ(mismatches, 0) << name;
  }
  // The types the engine computes with today; a new one joins automatically
  // (the fixture has every type gguf-py can dequantize).
  EXPECT_THAT(checked,
              ::testing::IsSupersetOf(
                  {"f16.quantized", "f16.random", "bf16.quantized", "bf16.random", "q4_0.quantized",
                   "q4_0.random", "q4_1.quantized", "q4_1.random", "q5_0.quantized", "q5_0.random",
                   "q5_1.quantized", "q5_1.random", "q8_0.quantized", "q8_0.random", "q4_k.random",
                   "q5_k.random", "q6_k.random"}));
}

// The matmul kernels the engine runs (SIMD, ggml rows and packed) decode
// the same blocks: W·x against gguf-py's floats, accumulated in double. The
// activations are integers in [-127, 127] with -127 in every block, which
// both int8 formats (Q8_1, Q8_K) encode exactly, so only float rounding
// separates the two (relative 2e-5 of sum |w x|, about n * float epsilon).
TEST(GgufPyDequantize, MatMulKernelsMatchGgufPyWeights) {
  std::unique_ptr<GgufFile> f = OpenFixture();
  ASSERT_NE(f, nullptr);
  int checked = 0;
  for (const TensorInfo& t : f->tensors()) {
    if (t.name.ends_with(".expected") || !kernels::GetDType(t.type).matmul) continue;
    // Random bf16 bit patterns span float's whole exponent range, so W·x
    // overflows float by construction; the bit-exact test above covers them.
    if (t.name == "bf16.random") continue;
    const std::string name(t.name);
    SCOPED_TRACE(name);
    const TensorInfo* want = f->FindTensor(name + ".expected");
    ASSERT_NE(want, nullptr);
    const int64_t n_in = t.dims[0], n_out = t.dims[1], n_tokens = 3;
    std::vector<float> w(n_in * n_out);
    std::memcpy(w.data(), want->data, w.size() * sizeof(float));
    std::vector<float> x(n_tokens * n_in);
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = i % 32 == 5 ? -127.0f
                         : static_cast<float>(static_cast<int>((i * 2654435761u) % 253) - 126);
    }
    const kernels::ActFormat fmt = kernels::ActFormatFor(t.type);
    std::vector<uint8_t> xq(n_tokens * kernels::ActRowBytes(fmt, n_in) + 64);
    kernels::QuantizeActivations(xq.data(), fmt, x.data(), n_in, n_tokens, 0, 1);

    kernels::WeightMatrix m{t.data, t.type, n_out, n_in, kernels::WeightLayout::kGgml};
    std::vector<uint8_t> packed_storage(kernels::PackedWeightBytes(m) + 64);
    std::vector<kernels::WeightMatrix> layouts = {m};
    if (kernels::PackedWeightBytes(m) > 0) {
      layouts.push_back(kernels::PackWeights(packed_storage.data(), m, 0, 1));
    }
    for (const kernels::WeightMatrix& lm : layouts) {
      std::vector<float> y(n_tokens * n_out, NAN);
      kernels::MatMul(y.data(), n_out, lm, xq.data(), n_tokens, 0, 1);
      for (int64_t tok = 0; tok < n_tokens; ++tok) {
        for (int64_t r = 0; r < n_out; ++r) {
          double want_y = 0, scale = 0;
          for (int64_t k = 0; k < n_in; ++k) {
            const double p = double(w[r * n_in + k]) * x[tok * n_in + k];
            want_y += p;
            scale += std::fabs(p);
          }
          EXPECT_NEAR(y[tok * n_out + r], want_y, 2e-5 * scale + 1e-30)
              << "token " << tok << " row " << r << " packed "
              << (lm.layout == kernels::WeightLayout::kPacked);
        }
      }
    }
    ++checked;
  }
  EXPECT_GE(checked, 16);  // F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 twice; BF16, Q4_K, Q5_K, Q6_K
}

// The engine's own encoder, decoded by the engine, must reproduce what
// gguf-py's encoder produced for the same type when the input is gguf-py's
// dequantized output (a fixed point of round-to-nearest quantization).
TEST(GgufPyDequantize, EngineQuantizeOfGgufPyOutputIsStable) {
  std::unique_ptr<GgufFile> f = OpenFixture();
  ASSERT_NE(f, nullptr);
  for (const char* name :
       {"q4_0.quantized", "q4_1.quantized", "q5_0.quantized", "q5_1.quantized", "q8_0.quantized"}) {
    SCOPED_TRACE(name);
    const TensorInfo* t = f->FindTensor(name);
    const TensorInfo* want = f->FindTensor(absl::StrCat(name, ".expected"));
    ASSERT_TRUE(t != nullptr && want != nullptr);
    const int64_t n = t->dims[0];
    std::vector<float> x(n), back(n);
    std::vector<uint8_t> q(kernels::RowBytes(t->type, n));
    double max_err = 0, max_abs = 0;
    for (int64_t r = 0; r < t->dims[1]; ++r) {
      std::memcpy(x.data(), want->data + r * n * sizeof(float), n * sizeof(float));
      kernels::QuantizeRow(q.data(), x.data(), t->type, n);
      kernels::DequantizeRow(back.data(), q.data(), t->type, n);
      for (int64_t i = 0; i < n; ++i) {
        max_err = std::max(max_err, std::fabs(double(back[i]) - x[i]));
        max_abs = std::max(max_abs, std::fabs(double(x[i])));
      }
    }
    // Re-quantizing grid points lands on (nearly) the same grid: the scale
    // is recomputed from f16-rounded values, so allow 1% of the range.
    EXPECT_LE(max_err, 0.01 * max_abs);
  }
}

}  // namespace
}  // namespace pdserve::gguf
