// Reads the bundled SmolLM2-135M model (skipped when it is not fetched).
#include <filesystem>
#include <map>
#include <string>

#include "engine/gguf/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve::gguf {
namespace {

using ::testing::ElementsAre;

class GgufModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(PDSERVE_MODEL_PATH)) {
      GTEST_SKIP() << PDSERVE_MODEL_PATH << " is missing; run scripts/fetch_model.sh";
    }
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(PDSERVE_MODEL_PATH);
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = std::move(f).value();
  }
  std::unique_ptr<GgufFile> file_;
};

TEST_F(GgufModelTest, Hyperparameters) {
  const GgufFile& g = *file_;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(*g.GetString("general.architecture"), "llama");
  EXPECT_EQ(*g.GetUint("llama.block_count"), 30u);
  EXPECT_EQ(*g.GetUint("llama.embedding_length"), 576u);
  EXPECT_EQ(*g.GetUint("llama.attention.head_count"), 9u);
  EXPECT_EQ(*g.GetUint("llama.attention.head_count_kv"), 3u);
  EXPECT_EQ(*g.GetUint("llama.feed_forward_length"), 1536u);
  EXPECT_EQ(*g.GetUint("llama.context_length"), 8192u);
  EXPECT_GT(*g.GetFloat("llama.rope.freq_base"), 0.0);
  EXPECT_NEAR(*g.GetFloat("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
}

TEST_F(GgufModelTest, Tokenizer) {
  const GgufFile& g = *file_;
  EXPECT_EQ(*g.GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(g.GetStringArray("tokenizer.ggml.tokens")->size(), 49152u);
  EXPECT_EQ(g.GetIntArray("tokenizer.ggml.token_type")->size(), 49152u);
  EXPECT_GT(g.GetStringArray("tokenizer.ggml.merges")->size(), 40000u);
  EXPECT_LT(*g.GetUint("tokenizer.ggml.eos_token_id"), 49152u);
  EXPECT_TRUE(g.Has("tokenizer.chat_template"));
}

TEST_F(GgufModelTest, Tensors) {
  const GgufFile& g = *file_;
  // 9 per layer (4 attention projections, 3 FFN, 2 norms) + embeddings +
  // output norm; the output projection is tied to the embeddings.
  EXPECT_EQ(g.tensors().size(), 30u * 9 + 2);
  std::map<kernels::DType, int> per_type;
  uint64_t total = 0;
  for (const TensorInfo& t : g.tensors()) {
    ++per_type[t.type];
    total += t.n_bytes;
    EXPECT_NE(t.data, nullptr) << t.name;
    EXPECT_LE(g.data_offset() + t.offset + t.n_bytes, g.file_size()) << t.name;
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
  }
  EXPECT_EQ(per_type[kernels::DType::kF32], 61);  // 2 norms per layer + output norm
  EXPECT_GT(per_type[kernels::DType::kQ4_1], 200);
  EXPECT_LE(total, g.file_size() - g.data_offset());
  EXPECT_GT(total, g.file_size() * 9 / 10);

  const TensorInfo* embd = g.FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_THAT(embd->dims, ElementsAre(576, 49152));
  const TensorInfo* q = g.FindTensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_THAT(q->dims, ElementsAre(576, 576));
  EXPECT_EQ(q->n_bytes, 576 / 32 * 20 * 576);
  const TensorInfo* k = g.FindTensor("blk.29.attn_k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_THAT(k->dims, ElementsAre(576, 192));  // 3 kv heads of 64
  const TensorInfo* norm = g.FindTensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->type, kernels::DType::kF32);
  EXPECT_THAT(norm->dims, ElementsAre(576));
  EXPECT_EQ(g.FindTensor("blk.30.attn_q.weight"), nullptr);
}

}  // namespace
}  // namespace pdserve::gguf
