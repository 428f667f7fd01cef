#include "engine/backend.h"

#include "absl/strings/str_cat.h"

#ifdef PDSERVE_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace pdserve {
namespace {

class CpuRunner : public Runner {
 public:
  CpuRunner(const Model* model, KvCache* cache, kernels::ThreadPool* pool, int32_t max_tokens,
            int32_t max_rows)
      : runner_(model, cache, pool, max_tokens, max_rows) {}
  void Forward(const ForwardBatch& batch, float* logits, LayerObserver* observer) override {
    runner_.Forward(batch, logits, observer);
  }

 private:
  ModelRunner runner_;
};

class CpuBackend : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  absl::StatusOr<std::unique_ptr<Runner>> CreateRunner(const Model* model, KvCache* cache,
                                                       kernels::ThreadPool* pool,
                                                       int32_t max_batch_tokens,
                                                       int32_t max_logit_rows) override {
    return std::make_unique<CpuRunner>(model, cache, pool, max_batch_tokens, max_logit_rows);
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device) {
  if (device == "cpu") return std::make_unique<CpuBackend>();
  if (device == "cuda" || device.substr(0, 5) == "cuda:") {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::CreateCudaBackend(device);
#else
    return absl::FailedPreconditionError(
        "this pdserve was built without CUDA (nvcc was not found at build time); use --device cpu");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", std::string(device),
                                                 "' (supported: cpu, cuda, cuda:N)"));
}

}  // namespace pdserve
