// Random-weight Llama models of any shape, built as GGUF images: tiny ones
// for tests, and named real-model shapes (`--load-format dummy`) for
// benchmarking without weight files. Same seed, same bytes, everywhere.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace pdserve {

struct DummyModelSpec {
  std::string name = "tiny";
  int32_t n_layers = 2;
  int32_t n_embd = 64;
  int32_t n_heads = 4;
  int32_t n_kv_heads = 2;
  int32_t n_ff = 128;
  int32_t n_ctx = 256;
  int32_t n_vocab = 0;  // 0: the built-in byte-level vocabulary (262 tokens)
  float rope_freq_base = 10000.0f;
  kernels::DType matrix_type = kernels::DType::kQ4_1;  // layer matrices
  kernels::DType embd_type = kernels::DType::kQ8_0;    // token_embd (and output when untied)
  // Per-tensor types by GGUF name ("blk.3.attn_v.weight"), overriding the two
  // above: mixes as llama-quantize lays them out (SetDummyFileType).
  std::map<std::string, kernels::DType> tensor_types;
  bool tied_embeddings = true;
  uint64_t seed = 1;
};

// Named shapes: "tiny", "smollm2-135m", "llama-3.2-1b", "llama-3-8b".
absl::StatusOr<DummyModelSpec> NamedDummyConfig(std::string_view name);
const char* DummyConfigNames();

// Sets every matrix's type as llama-quantize's file type `name` would for
// this shape: "q4_0", "q8_0", "q6_k", "q4_k_m", "q5_k_m". The K mixes follow
// llama.cpp's llama_tensor_get_type: the output matrix (token_embd when
// tied) in Q6_K; attn_v and ffn_down in Q6_K on the first and last eighth of
// the layers and every third between; rows whose length is not a multiple
// of 256 fall back to Q5_0 (from Q4_K), Q5_1 (Q5_K) or Q8_0 (Q6_K).
absl::Status SetDummyFileType(std::string_view name, DummyModelSpec* spec);
const char* DummyFileTypeNames();

// The whole GGUF file image. Vocabularies larger than the built-in one are
// padded with unused tokens.
absl::StatusOr<std::string> BuildDummyModelGguf(const DummyModelSpec& spec);

}  // namespace pdserve
