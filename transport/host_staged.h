// Host-staged KV transfer for GPU nodes without NCCL or IPC between them
// (`--kv-transport tcp` with `--device cuda`): decorators that put pinned
// host buffers between device KV blocks and a host-memory backend (tcp).
//
// Sender: SendLayerAfter(layer, device views, ready_event) queues the
// layer's device-to-host copies on a side stream behind ready_event (a GPU
// wait: the compute thread never synchronizes) and returns; a staging
// thread waits for each copy and hands the pinned copy to the inner
// sender, so the copies and the network overlap the compute of later
// layers. Receiver: Post(device views) posts pinned host buffers to the
// inner receiver; when the transfer lands, one host-to-device copy per
// layer puts it into the device blocks before on_done runs (the receiving
// interface has no per-layer hook, so this copy is not overlapped).
//
// The guarantees of transport/kv_transport.h hold: the sender reads the
// device views only through copies that are complete before Wait returns,
// on_done runs or Abort returns; the receiver writes the device blocks only
// inside its completion, before on_done.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/device_send_handle.h"
#include "transport/kv_transport.h"

namespace pdserve::transport {

struct HostStagedOptions {
  int device = 0;
  // Pinned buffers kept for reuse once free; more are released.
  size_t max_cached_bytes = size_t{1} << 30;
};

// The handles it returns are DeviceKvSendHandles.
absl::StatusOr<std::unique_ptr<KvSender>> MakeHostStagedSender(std::unique_ptr<KvSender> inner,
                                                               HostStagedOptions options = {});
absl::StatusOr<std::unique_ptr<KvReceiver>> MakeHostStagedReceiver(
    std::unique_ptr<KvReceiver> inner, HostStagedOptions options = {});

}  // namespace pdserve::transport
