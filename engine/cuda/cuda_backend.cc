#include "engine/cuda/cuda_backend.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/cuda/cuda_runner.h"
#include "engine/cuda/cuda_status.h"

namespace pdserve::cuda {
namespace {

// KV storage in plain device memory (never managed memory: the transport
// hands these pointers to NCCL and the kernels, and managed memory larger
// than the card can hang the GPU).
class CudaKvAllocator final : public KvAllocator {
 public:
  explicit CudaKvAllocator(int device) : device_(device) {}
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    PDS_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_), absl::StrCat("selecting GPU ", device_));
    PDS_ASSIGN_OR_RETURN(
        DeviceBuffer buf,
        DeviceBuffer::Allocate(bytes, absl::StrCat("the KV cache on GPU ", device_)));
    // Zeroed so that a block read before it is written holds zeros, as the
    // host cache's fresh pages do.
    PDS_CUDA_RETURN_IF_ERROR(cudaMemset(buf.get(), 0, bytes), "clearing the KV cache");
    // The runner's and the transport's streams do not wait for the legacy
    // stream the memset ran on.
    PDS_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize(), "clearing the KV cache");
    void* p = buf.get();
    buffers_.push_back(std::move(buf));
    return p;
  }
  void Free(void* ptr, size_t) override {
    cudaSetDevice(device_);
    for (auto it = buffers_.begin(); it != buffers_.end(); ++it) {
      if (it->get() == ptr) {
        buffers_.erase(it);
        return;
      }
    }
  }

 private:
  const int device_;
  std::vector<DeviceBuffer> buffers_;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, std::string name)
      : device_(device), name_(std::move(name)), kv_(device) {}
  std::string name() const override { return name_; }
  KvAllocator* kv_allocator() override { return &kv_; }
  absl::StatusOr<std::unique_ptr<Runner>> CreateRunner(const Model* model, KvCache* cache,
                                                       kernels::ThreadPool* pool,
                                                       int32_t max_batch_tokens,
                                                       int32_t max_logit_rows) override {
    PDS_ASSIGN_OR_RETURN(std::unique_ptr<CudaRunner> r,
                         CudaRunner::Create(device_, model, cache, max_batch_tokens, max_logit_rows,
                                            CudaRunnerOptions{}));
    return std::unique_ptr<Runner>(std::move(r));
  }

 private:
  const int device_;
  const std::string name_;
  CudaKvAllocator kv_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::string_view device) {
  int index = 0;
  if (device.substr(0, 5) == "cuda:") {
    if (!absl::SimpleAtoi(std::string(device.substr(5)), &index) || index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad device '", std::string(device), "' (expected cuda or cuda:N)"));
    }
  } else if (device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("bad device '", std::string(device), "' (expected cuda or cuda:N)"));
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("--device ", std::string(device), ": no usable CUDA GPU (",
                     cudaGetErrorString(e), "); use --device cpu"));
  }
  if (index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device ", std::string(device), ": only ", count, " CUDA GPU(s) present"));
  }
  PDS_CUDA_RETURN_IF_ERROR(cudaSetDevice(index), absl::StrCat("selecting GPU ", index));
  cudaDeviceProp prop;
  PDS_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index), "reading GPU properties");
  if (prop.major < 8) {
    return absl::FailedPreconditionError(
        absl::StrCat("GPU ", index, " (", prop.name, ") has compute capability ", prop.major, ".",
                     prop.minor, "; pdserve's CUDA kernels are built for 8.0 and 9.0"));
  }
  return std::unique_ptr<Backend>(new CudaBackend(index, absl::StrCat("cuda:", index)));
}

}  // namespace pdserve::cuda
