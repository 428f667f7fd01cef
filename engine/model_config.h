// Hyperparameters of a Llama-family model (llama, which covers Llama 3.x and
// Mistral; qwen2; qwen3), read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"

namespace pdserve {

// How RoPE pairs the dimensions of a head (ggml's rope modes).
enum class RopeStyle {
  kInterleaved,  // (2i, 2i+1): GGUF `llama`, whose conversion permuted Q and K
  kNeox,         // (i, i + n_rot/2): Qwen2/Qwen3 as trained (rotate_half)
};

struct ModelConfig {
  std::string architecture;  // "llama", "qwen2" or "qwen3"
  std::string name;          // general.name, may be empty
  int32_t n_layers = 0;
  int32_t n_embd = 0;  // model width
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;  // n_embd / n_heads unless the file says otherwise
  int32_t n_ff = 0;      // feed-forward width
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;  // context length the model was trained for
  int32_t n_rot = 0;        // rotary dimensions per head
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f;  // linear position scaling (1 = none)
  float rms_eps = 1e-5f;
  bool tied_embeddings = false;  // output projection reuses token_embd
  RopeStyle rope_style = RopeStyle::kInterleaved;
  bool qkv_bias = false;  // Qwen2: Q, K and V projections add a bias
  bool qk_norm = false;   // Qwen3: RMSNorm over each head of Q and K before RoPE

  int32_t q_dim() const { return n_heads * head_dim; }
  int32_t kv_dim() const { return n_kv_heads * head_dim; }
};

// Architectures whose forward pass pdserve implements.
inline constexpr const char* kSupportedArchitectures = "llama, qwen2, qwen3";

// Reads and validates the hyperparameters (positive, consistent: heads
// divide the width, KV heads divide heads, even rotary dims, ...).
absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::GgufFile& file);

}  // namespace pdserve
