// Helpers of the CUDA tests. Each test source builds twice: against the real
// CUDA runtime (the test skips when no GPU is usable) and against the CPU
// emulation (PDS_CUDA_EMU, kernels/cuda/emu/), which runs everywhere.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_compat.h"

namespace pdserve::cuda_testing {

inline bool Emulated() {
#ifdef PDS_CUDA_EMU
  return true;
#else
  return false;
#endif
}

// True when a CUDA device is usable; otherwise *why says why not. A machine
// without a driver makes cudaGetDeviceCount fail: that means "no GPU".
inline bool HaveGpu(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it for later calls
    *why = std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorString(e) +
           "); GPU test skipped";
    return false;
  }
  if (n == 0) {
    *why = "no CUDA device; GPU test skipped";
    return false;
  }
  return true;
}

// PDSERVE_REQUIRE_GPU=1: the run is on a GPU machine.
inline bool GpuRequired() {
  const char* v = std::getenv("PDSERVE_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1" && !Emulated();
}

inline int GpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// Owns n elements of device memory.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) : n_(n) {
    if (cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) {
      p_ = nullptr;
      ADD_FAILURE() << "cudaMalloc of " << n * sizeof(T) << " bytes failed";
    }
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { Upload(host); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (p_ != nullptr) cudaFree(p_);
  }

  T* get() const { return p_; }
  size_t size() const { return n_; }
  void Upload(const std::vector<T>& host) {
    ASSERT_LE(host.size(), n_);
    ASSERT_EQ(cudaSuccess,
              cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    // A pageable upload may still be in flight on the legacy stream, which
    // non-blocking streams (runner, transport) do not wait for.
    ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    EXPECT_EQ(cudaSuccess, cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // Fills every byte with 0xFF (NaN floats) so unwritten outputs show.
  void Poison() {
    EXPECT_EQ(cudaSuccess, cudaMemset(p_, 0xFF, n_ * sizeof(T)));
    EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace pdserve::cuda_testing

// Skips the test without a usable GPU; with PDSERVE_REQUIRE_GPU=1 in the
// environment (tests/gpu/device_check.sh on a GPU machine) that is a failure
// instead, so a broken driver or library setup cannot pass as skips.
#define PDS_SKIP_WITHOUT_GPU()                                       \
  do {                                                               \
    std::string pds_why;                                             \
    if (!::pdserve::cuda_testing::HaveGpu(&pds_why)) {               \
      if (::pdserve::cuda_testing::GpuRequired()) FAIL() << pds_why; \
      GTEST_SKIP() << pds_why;                                       \
    }                                                                \
  } while (false)

// Asserts a CUDA call or launch succeeded and the device finished cleanly.
#define PDS_CUDA_OK(expr)                                                        \
  do {                                                                           \
    const cudaError_t pds_e = (expr);                                            \
    ASSERT_EQ(pds_e, cudaSuccess) << #expr << ": " << cudaGetErrorString(pds_e); \
    const cudaError_t pds_s = cudaDeviceSynchronize();                           \
    ASSERT_EQ(pds_s, cudaSuccess) << #expr << ": " << cudaGetErrorString(pds_s); \
  } while (false)
