// The engine's forward pass (paged KV, batching, chunking, threads) against
// a naive float implementation, on random-weight models of every weight type.
#include <numeric>

#include "engine/forward.h"
#include "tests/unit/engine/reference_forward.h"
#include "tests/unit/engine/test_util.h"

namespace pdserve::testing {
namespace {

struct Runner {
  std::shared_ptr<const Model> model;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<kernels::ThreadPool> pool;
  std::unique_ptr<PackedModelWeights> packed;
  std::unique_ptr<ModelRunner> runner;

  Runner(std::shared_ptr<const Model> m, int threads, int block_size = 4, int max_tokens = 64,
         kernels::DType kv = kernels::DType::kF16, bool pack = false)
      : model(std::move(m)) {
    const ModelConfig& c = model->config();
    KvCacheConfig kc{c.n_layers, c.n_kv_heads, c.head_dim, block_size, kv, 256, true};
    cache = std::move(*KvCache::Create(kc));
    pool = std::make_unique<kernels::ThreadPool>(threads);
    if (pack) packed = std::make_unique<PackedModelWeights>(*model, pool.get());
    runner = std::make_unique<ModelRunner>(model.get(), cache.get(), pool.get(), max_tokens,
                                           max_tokens, packed ? &packed->weights() : nullptr);
  }
};

std::vector<TokenId> Prompt(int n, int seed, int n_vocab) {
  std::vector<TokenId> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 7919 + seed * 104729) % (n_vocab - 3);
  return t;
}

// Runs tokens through the runner in chunks of `chunk`, returning the logits
// at every position.
std::vector<std::vector<float>> RunChunked(Runner& r, const std::vector<TokenId>& tokens,
                                           int chunk) {
  const int V = r.model->config().n_vocab;
  const int n = static_cast<int>(tokens.size());
  const int bs = r.cache->config().block_size;
  std::vector<BlockId> blocks = *r.cache->Allocate((n + bs - 1) / bs);
  std::vector<std::vector<float>> out;
  for (int p = 0; p < n; p += chunk) {
    const int m = std::min(chunk, n - p);
    ForwardBatch b;
    b.tokens.assign(tokens.begin() + p, tokens.begin() + p + m);
    b.seqs.push_back({blocks.data(), p, m, 0});
    for (int i = 0; i < m; ++i) b.logit_rows.push_back(i);
    std::vector<float> logits(static_cast<size_t>(m) * V);
    r.runner->Forward(b, logits.data());
    for (int i = 0; i < m; ++i)
      out.emplace_back(logits.begin() + i * V, logits.begin() + (i + 1) * V);
  }
  r.cache->Release(blocks);
  return out;
}

struct TypeCase {
  kernels::DType matrix;
  kernels::DType embd;
  int n_embd, n_ff, n_heads, n_kv_heads;
};

class ForwardTypes : public ::testing::TestWithParam<TypeCase> {};

TEST_P(ForwardTypes, MatchesNaiveReferencePrefillAndDecode) {
  const TypeCase tc = GetParam();
  DummyModelSpec spec;
  spec.matrix_type = tc.matrix;
  spec.embd_type = tc.embd;
  spec.n_embd = tc.n_embd;
  spec.n_ff = tc.n_ff;
  spec.n_heads = tc.n_heads;
  spec.n_kv_heads = tc.n_kv_heads;
  spec.tied_embeddings = tc.matrix != kernels::DType::kF32;  // cover both
  auto model = LoadDummy(spec);
  const std::vector<TokenId> tokens = Prompt(21, 3, model->config().n_vocab);
  const auto want = ReferenceForward(*model, tokens);
  for (int threads : {1, 2}) {
    for (int chunk : {21, 5, 1}) {  // one-shot prefill, chunked prefill, token-by-token decode
      for (bool pack : {false, true}) {
        Runner r(model, threads, 4, 64, kernels::DType::kF16, pack);
        const auto got = RunChunked(r, tokens, chunk);
        for (size_t t = 0; t < tokens.size(); ++t) {
          // Activations are quantized to int8 blocks for quantized weights.
          const double tol =
              tc.matrix == kernels::DType::kF32 || tc.matrix == kernels::DType::kF16 ? 1e-6 : 2e-3;
          EXPECT_LT(Nmse(got[t], want[t]), tol)
              << "type " << kernels::GetDType(tc.matrix).name << " threads " << threads << " chunk "
              << chunk << " packed " << pack << " position " << t;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllWeightTypes, ForwardTypes,
    ::testing::Values(TypeCase{kernels::DType::kF32, kernels::DType::kF32, 64, 128, 4, 2},
                      TypeCase{kernels::DType::kF16, kernels::DType::kF16, 64, 128, 4, 2},
                      TypeCase{kernels::DType::kBF16, kernels::DType::kBF16, 64, 128, 4, 2},
                      TypeCase{kernels::DType::kQ4_0, kernels::DType::kQ8_0, 64, 128, 4, 2},
                      TypeCase{kernels::DType::kQ4_1, kernels::DType::kQ8_0, 96, 160, 3, 1},
                      TypeCase{kernels::DType::kQ5_0, kernels::DType::kQ8_0, 64, 128, 4, 2},
                      TypeCase{kernels::DType::kQ5_1, kernels::DType::kQ5_0, 96, 160, 3, 1},
                      TypeCase{kernels::DType::kQ8_0, kernels::DType::kQ8_0, 64, 128, 4, 4},
                      TypeCase{kernels::DType::kQ4_K, kernels::DType::kQ6_K, 256, 512, 4, 2},
                      TypeCase{kernels::DType::kQ5_K, kernels::DType::kQ5_1, 256, 512, 4, 2},
                      TypeCase{kernels::DType::kQ6_K, kernels::DType::kQ4_K, 256, 512, 4, 2}),
    [](const auto& info) { return std::string(kernels::GetDType(info.param.matrix).name); });

// Files as llama-quantize lays out Q4_K_M and Q5_K_M: a width that is not a
// multiple of 256 (320) sends the attention and gate/up matrices and the
// tied embeddings to the Q5_0/Q5_1/Q8_0 fallbacks, ffn_down (rows of 512)
// to Q4_K/Q5_K with Q6_K on the layers that get more bits.
TEST(Forward, KQuantMixesMatchNaiveReference) {
  for (const char* file_type : {"q4_k_m", "q5_k_m"}) {
    DummyModelSpec spec;
    spec.n_layers = 8, spec.n_embd = 320, spec.n_ff = 512, spec.n_heads = 5, spec.n_kv_heads = 1;
    ASSERT_TRUE(SetDummyFileType(file_type, &spec).ok());
    const bool q4 = std::string(file_type) == "q4_k_m";
    EXPECT_EQ(spec.matrix_type, q4 ? kernels::DType::kQ5_0 : kernels::DType::kQ5_1);
    EXPECT_EQ(spec.embd_type, kernels::DType::kQ8_0);
    EXPECT_EQ(spec.tensor_types["blk.0.attn_v.weight"], kernels::DType::kQ8_0);
    EXPECT_EQ(spec.tensor_types["blk.0.ffn_down.weight"], kernels::DType::kQ6_K);
    EXPECT_EQ(spec.tensor_types["blk.1.ffn_down.weight"],
              q4 ? kernels::DType::kQ4_K : kernels::DType::kQ5_K);
    auto model = LoadDummy(spec);
    const std::vector<TokenId> tokens = Prompt(13, 5, model->config().n_vocab);
    const auto want = ReferenceForward(*model, tokens);
    for (int chunk : {13, 1}) {
      for (bool pack : {false, true}) {
        Runner r(model, 2, 4, 64, kernels::DType::kF16, pack);
        const auto got = RunChunked(r, tokens, chunk);
        for (size_t t = 0; t < tokens.size(); ++t) {
          EXPECT_LT(Nmse(got[t], want[t]), 2e-3)
              << file_type << " chunk " << chunk << " packed " << pack << " position " << t;
        }
      }
    }
  }
  DummyModelSpec spec;
  EXPECT_FALSE(SetDummyFileType("q3_k_s", &spec).ok());
}

TEST(Forward, BatchOfSequencesMatchesEachAlone) {
  auto model = LoadDummy(DummyModelSpec{});
  const int V = model->config().n_vocab;
  // Three sequences: a fresh prefill, a decode step after a cached prefix,
  // and a chunk in the middle of a prompt, all in one batch.
  const std::vector<TokenId> a = Prompt(9, 1, V), b = Prompt(14, 2, V), c = Prompt(20, 4, V);
  Runner r(model, 2);
  const int bs = 4;
  auto blocks_a = *r.cache->Allocate(3), blocks_b = *r.cache->Allocate(4),
       blocks_c = *r.cache->Allocate(5);
  // Prefill b[0, 13) and c[0, 10) first.
  {
    ForwardBatch pre;
    pre.tokens.assign(b.begin(), b.begin() + 13);
    pre.tokens.insert(pre.tokens.end(), c.begin(), c.begin() + 10);
    pre.seqs.push_back({blocks_b.data(), 0, 13, 0});
    pre.seqs.push_back({blocks_c.data(), 0, 10, 13});
    r.runner->Forward(pre, nullptr);
  }
  ForwardBatch batch;
  batch.tokens.assign(a.begin(), a.end());
  batch.tokens.push_back(b[13]);
  batch.tokens.insert(batch.tokens.end(), c.begin() + 10, c.begin() + 16);
  batch.seqs.push_back({blocks_a.data(), 0, 9, 0});
  batch.seqs.push_back({blocks_b.data(), 13, 1, 9});
  batch.seqs.push_back({blocks_c.data(), 10, 6, 10});
  batch.logit_rows = {8, 9, 15};
  std::vector<float> logits(3 * V);
  r.runner->Forward(batch, logits.data());
  (void)bs;

  const auto ref_a = ReferenceForward(*model, a);
  const auto ref_b = ReferenceForward(*model, b);
  const auto ref_c = ReferenceForward(*model, std::vector<TokenId>(c.begin(), c.begin() + 16));
  auto row = [&](int i) {
    return std::vector<float>(logits.begin() + i * V, logits.begin() + (i + 1) * V);
  };
  EXPECT_LT(Nmse(row(0), ref_a[8]), 2e-3);
  EXPECT_LT(Nmse(row(1), ref_b[13]), 2e-3);
  EXPECT_LT(Nmse(row(2), ref_c[15]), 2e-3);
}

TEST(Forward, F32KvCacheMatchesF16WithinRounding) {
  auto model = LoadDummy(DummyModelSpec{});
  const std::vector<TokenId> tokens = Prompt(17, 5, model->config().n_vocab);
  Runner r16(model, 2, 4, 64, kernels::DType::kF16);
  Runner r32(model, 2, 4, 64, kernels::DType::kF32);
  const auto a = RunChunked(r16, tokens, 17);
  const auto b = RunChunked(r32, tokens, 17);
  // f16 rounding of K and V moves a few int8 activation codes downstream.
  for (size_t t = 0; t < tokens.size(); ++t) EXPECT_LT(Nmse(a[t], b[t]), 1e-3);
}

}  // namespace
}  // namespace pdserve::testing
