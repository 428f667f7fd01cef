// A Llama-family model's weights: views into the mmapped GGUF file, checked
// for shape and type once at load time. Nothing is copied.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"
#include "engine/model_config.h"
#include "kernels/cpu/matmul.h"

namespace pdserve {

struct LayerWeights {
  const float* attn_norm = nullptr;  // (n_embd)
  kernels::WeightMatrix wq;          // (q_dim, n_embd)
  kernels::WeightMatrix wk;          // (kv_dim, n_embd)
  kernels::WeightMatrix wv;          // (kv_dim, n_embd)
  const float* bq = nullptr;         // (q_dim) bias, or null (Qwen2 has them)
  const float* bk = nullptr;         // (kv_dim) bias, or null
  const float* bv = nullptr;         // (kv_dim) bias, or null
  const float* q_norm = nullptr;     // (head_dim) per-head RMSNorm of Q, or null (Qwen3)
  const float* k_norm = nullptr;     // (head_dim) per-head RMSNorm of K, or null
  kernels::WeightMatrix wo;          // (n_embd, q_dim)
  const float* ffn_norm = nullptr;   // (n_embd)
  kernels::WeightMatrix w_gate;      // (n_ff, n_embd)
  kernels::WeightMatrix w_up;        // (n_ff, n_embd)
  kernels::WeightMatrix w_down;      // (n_embd, n_ff)
};

struct ModelWeights {
  kernels::WeightMatrix token_embd;    // (n_vocab, n_embd)
  const float* output_norm = nullptr;  // (n_embd)
  kernels::WeightMatrix output;        // (n_vocab, n_embd); token_embd when tied
  const float* rope_freqs = nullptr;   // (n_rot / 2) frequency divisors, or null
  std::vector<LayerWeights> layers;
  int64_t total_bytes = 0;  // bytes of all weight tensors
};

// Binds every tensor the forward pass needs, checking names, shapes and
// types. Errors name the tensor and list the supported types.
absl::StatusOr<ModelWeights> BindModelWeights(const gguf::GgufFile& file,
                                              const ModelConfig& config);

}  // namespace pdserve
