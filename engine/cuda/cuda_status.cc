#include "engine/cuda/cuda_status.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pdserve::cuda {

absl::Status CudaStatus(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear a non-sticky error so later calls start clean
  const std::string msg =
      absl::StrCat(std::string(what), ": ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ")");
  switch (e) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInvalidDevice:
    case cudaErrorInitializationError:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status CublasStatus(cublasStatus_t s, std::string_view what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(std::string(what), ": ", cublasGetStatusString(s));
  return s == CUBLAS_STATUS_ALLOC_FAILED ? absl::ResourceExhaustedError(msg)
                                         : absl::InternalError(msg);
}

std::string FormatBytes(size_t bytes) {
  if (bytes >= (size_t{1} << 30)) return absl::StrFormat("%.2f GiB", bytes / 1073741824.0);
  return absl::StrFormat("%.1f MiB", bytes / 1048576.0);
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes, std::string_view what) {
  DeviceBuffer b;
  const cudaError_t e = cudaMalloc(&b.ptr_, bytes == 0 ? 1 : bytes);
  if (e != cudaSuccess) {
    b.ptr_ = nullptr;
    size_t free_bytes = 0, total_bytes = 0;
    cudaGetLastError();
    std::string mem;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      mem = absl::StrCat("; ", FormatBytes(free_bytes), " of ", FormatBytes(total_bytes), " free");
    }
    cudaGetLastError();
    return CudaStatus(e, absl::StrCat("allocating ", FormatBytes(bytes), " of GPU memory for ",
                                      std::string(what), mem));
  }
  b.bytes_ = bytes;
  return b;
}

void DeviceBuffer::Reset() {
  if (ptr_ != nullptr) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes, std::string_view what) {
  PinnedBuffer b;
  const cudaError_t e = cudaMallocHost(&b.ptr_, bytes == 0 ? 1 : bytes);
  if (e != cudaSuccess) {
    b.ptr_ = nullptr;
    return CudaStatus(e, absl::StrCat("allocating ", FormatBytes(bytes),
                                      " of pinned host memory for ", std::string(what)));
  }
  b.bytes_ = bytes;
  return b;
}

void PinnedBuffer::Reset() {
  if (ptr_ != nullptr) cudaFreeHost(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

}  // namespace pdserve::cuda
