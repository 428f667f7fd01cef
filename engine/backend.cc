#include "engine/backend.h"

#include "absl/strings/str_cat.h"
#include "engine/cuda_module.h"

namespace pdserve {
namespace {

class CpuRunner : public Runner {
 public:
  CpuRunner(const Model* model, KvCache* cache, kernels::ThreadPool* pool, int32_t max_tokens,
            int32_t max_rows, bool pack)
      : packed_(pack ? std::make_unique<PackedModelWeights>(*model, pool) : nullptr),
        runner_(model, cache, pool, max_tokens, max_rows, packed_ ? &packed_->weights() : nullptr) {
  }
  void Forward(const ForwardBatch& batch, float* logits, LayerObserver* observer) override {
    runner_.Forward(batch, logits, observer);
  }

 private:
  std::unique_ptr<PackedModelWeights> packed_;
  ModelRunner runner_;
};

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(bool pack) : pack_(pack) {}
  std::string name() const override { return "cpu"; }
  absl::StatusOr<std::unique_ptr<Runner>> CreateRunner(const Model* model, KvCache* cache,
                                                       kernels::ThreadPool* pool,
                                                       int32_t max_batch_tokens,
                                                       int32_t max_logit_rows) override {
    return std::make_unique<CpuRunner>(model, cache, pool, max_batch_tokens, max_logit_rows, pack_);
  }

 private:
  bool pack_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device, bool pack_weights) {
  if (device == "cpu") return std::make_unique<CpuBackend>(pack_weights);
  if (device == "cuda" || device.substr(0, 5) == "cuda:") {
    // The CUDA libraries are mapped only now, by the module (engine/cuda_module.h).
    absl::StatusOr<const CudaBackendModule*> cuda = LoadCudaBackendModule();
    if (!cuda.ok()) return cuda.status();
    return (*cuda)->create_backend(device);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", std::string(device), "' (supported: cpu, cuda, cuda:N)"));
}

}  // namespace pdserve
