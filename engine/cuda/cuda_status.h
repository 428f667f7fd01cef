// CUDA, cuBLAS errors as absl::Status, and device memory that frees itself.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cublas_compat.h"

namespace pdserve::cuda {

// OK for cudaSuccess; else an error naming `what` and the CUDA error
// (ResourceExhausted for out of memory, FailedPrecondition for no device).
absl::Status CudaStatus(cudaError_t e, std::string_view what);
absl::Status CublasStatus(cublasStatus_t s, std::string_view what);

#define PDS_CUDA_RETURN_IF_ERROR(expr, what)                                             \
  do {                                                                                   \
    const cudaError_t pds_cuda_e = (expr);                                               \
    if (pds_cuda_e != cudaSuccess) return ::pdserve::cuda::CudaStatus(pds_cuda_e, what); \
  } while (false)

// "1.5 GiB"-style sizes for messages.
std::string FormatBytes(size_t bytes);

// One cudaMalloc allocation (never managed memory), freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    Reset();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }

  // ResourceExhausted (with free / total memory) when the device is full.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes, std::string_view what);

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void Reset();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Pinned host memory, freed on destruction.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    Reset();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { Reset(); }

  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes, std::string_view what);
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void Reset();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace pdserve::cuda
