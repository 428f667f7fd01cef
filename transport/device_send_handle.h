// The send handle of the GPU backends (NCCL, IPC, host-staged tcp): a
// KvSendHandle that also takes a CUDA event, so a GPU producer hands each
// layer over without synchronizing the host.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "transport/kv_transport.h"

namespace pdserve::transport {

class DeviceKvSendHandle : public KvSendHandle {
 public:
  // Like SendLayer, but the blocks are final only once `ready_event` (a
  // cudaEvent_t, e.g. from cuda::DeviceLayerObserver) completes: the
  // backend waits for it on the GPU, not on the host. Should the producer
  // record the event again before the backend's wait ran, the wait covers
  // the newer work, which is later and so still safe.
  virtual absl::Status SendLayerAfter(int32_t layer, absl::Span<const ConstBlockView> blocks,
                                      void* ready_event) = 0;
};

}  // namespace pdserve::transport
