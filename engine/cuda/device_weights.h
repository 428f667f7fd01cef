// A model's weights on the GPU, uploaded once: the quantized GGUF rows for
// the decode matvecs and, when memory allows, an f16 copy of each matrix for
// the prefill GEMMs (else the runner dequantizes per product into scratch).
// Q/K/V and gate/up are concatenated by rows where their types agree, so one
// product computes them together.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cuda/cuda_status.h"
#include "engine/model.h"
#include "kernels/dtype.h"

namespace pdserve::cuda {

struct DeviceMatrix {
  const void* data = nullptr;   // (n_out, n_in) GGUF rows of `type`, device
  const __half* f16 = nullptr;  // (n_out, n_in) dequantized, device; null: not cached
  kernels::DType type = kernels::DType::kF32;
  int64_t n_out = 0;
  int64_t n_in = 0;
  int64_t col = 0;  // first output column this matrix writes in its product
};

// One product y = x · Wᵀ whose output columns come from one or more matrices.
struct DeviceLinear {
  std::vector<DeviceMatrix> parts;
  int64_t n_out = 0;
  int64_t n_in = 0;
};

struct DeviceLayer {
  const float* attn_norm = nullptr;  // (n_embd)
  const float* ffn_norm = nullptr;   // (n_embd)
  DeviceLinear qkv;                  // (q_dim + 2 kv_dim, n_embd): q, k, v columns
  DeviceLinear wo;                   // (n_embd, q_dim)
  DeviceLinear gate_up;              // (2 n_ff, n_embd): gate, up columns
  DeviceLinear down;                 // (n_embd, n_ff)
};

enum class F16Weights {
  kAuto,  // cache when the f16 copies fit beside reserve_bytes of free memory
  kOn,
  kOff,
};

struct DeviceWeights {
  DeviceMatrix token_embd;             // (n_vocab, n_embd)
  const float* output_norm = nullptr;  // (n_embd)
  DeviceLinear output;                 // (n_vocab, n_embd)
  std::vector<DeviceLayer> layers;
  const float* rope = nullptr;  // (n_ctx, n_rot) interleaved cos/sin
  int64_t quant_bytes = 0;      // GGUF weight bytes on the device
  int64_t f16_bytes = 0;        // f16 copies (0 when not cached)
  bool f16_cached = false;
  int64_t max_matrix_elems = 0;       // largest matrix: the per-product f16 scratch
  std::vector<DeviceBuffer> buffers;  // owns all of the above
};

// Uploads model's weights (the current device is the target). Errors name
// the tensor group and the memory that was missing.
absl::StatusOr<std::unique_ptr<DeviceWeights>> UploadWeights(const Model& model, F16Weights f16,
                                                             size_t reserve_bytes,
                                                             cudaStream_t stream);

}  // namespace pdserve::cuda
