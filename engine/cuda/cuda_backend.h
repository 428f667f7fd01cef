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

// An observer that always takes the device-side event of each layer's KV
// store (LayerObserver::TakesDeviceEvents), so it can order its own GPU work
// (a transport's copy or send) after it without blocking the host. The CUDA
// runner calls OnLayerStoredOnDevice instead of OnLayerStored for observers
// that take events; for any other it waits for the event first, so the KV
// is in device memory when OnLayerStored runs.
class DeviceLayerObserver : public LayerObserver {
 public:
  bool TakesDeviceEvents() const override { return true; }
  // stored_event: the cudaEvent_t recorded on the compute stream after the
  // layer's KV store. Valid until the next Forward call records it again.
  void OnLayerStoredOnDevice(int32_t layer, void* stored_event) override = 0;
};

}  // namespace pdserve::cuda
