// The CUDA backend: a KV allocator over plain cudaMalloc and a Runner that
// runs the forward pass on one GPU (cuda_runner.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace pdserve::cuda {

// "cuda" (device 0) or "cuda:N". FailedPrecondition when no usable GPU is
// there (no driver, no device, N out of range), naming what was found.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::string_view device);

// An observer that also takes the device-side event of each layer's KV
// store, so it can order its own GPU work (a transport's pack and send)
// after it without blocking the host. The CUDA runner calls
// OnLayerStoredOnDevice instead of OnLayerStored for such observers; for any
// other observer it waits for the event first, so the KV is in device memory
// when OnLayerStored runs.
class DeviceLayerObserver : public LayerObserver {
 public:
  // stored_event: the cudaEvent_t recorded on the compute stream after the
  // layer's KV store (void* keeps CUDA headers out of this header). Valid
  // until the next Forward call records it again.
  virtual void OnLayerStoredOnDevice(int32_t layer, void* stored_event) = 0;
};

}  // namespace pdserve::cuda
