// Random-weight Llama models of any shape, built as GGUF images: tiny ones
// for tests, and named real-model shapes (`--load-format dummy`) for
// benchmarking without weight files. Same seed, same bytes, everywhere.
#pragma once

#include <cstdint>
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
  bool tied_embeddings = true;
  uint64_t seed = 1;
};

// Named shapes: "tiny", "smollm2-135m", "llama-3-8b".
absl::StatusOr<DummyModelSpec> NamedDummyConfig(std::string_view name);
const char* DummyConfigNames();

// The whole GGUF file image. Vocabularies larger than the built-in one are
// padded with unused tokens.
absl::StatusOr<std::string> BuildDummyModelGguf(const DummyModelSpec& spec);

}  // namespace pdserve
