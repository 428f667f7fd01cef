// Where the forward pass runs. The CPU backend is the reference; a CUDA
// backend (built where nvcc exists) implements the same Runner over device
// memory. The engine, scheduler and KV cache metadata are shared.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"

namespace pdserve {

// One forward pass over a flat batch; see ModelRunner (the CPU one).
class Runner {
 public:
  virtual ~Runner() = default;
  // logits: (batch.logit_rows.size(), n_vocab) in host memory.
  virtual void Forward(const ForwardBatch& batch, float* logits, LayerObserver* observer) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Allocates KV storage; nullptr means host memory.
  virtual KvAllocator* kv_allocator() { return nullptr; }
  virtual absl::StatusOr<std::unique_ptr<Runner>> CreateRunner(const Model* model, KvCache* cache,
                                                               kernels::ThreadPool* pool,
                                                               int32_t max_batch_tokens,
                                                               int32_t max_logit_rows) = 0;
};

// "cpu", "cuda" or "cuda:N". Errors name the devices this build supports.
// `pack_weights` (CPU): repack quantized matrices at load for faster
// matmuls, at the cost of a second copy of them in memory.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device,
                                                       bool pack_weights = true);

}  // namespace pdserve
