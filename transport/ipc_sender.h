// KvSender over CUDA IPC, for a prefill and a decode node on one host (one
// GPU shared by both processes, or two GPUs of one machine). Endpoints are
// "ipc:host:port": a TCP control connection to the receiver, carrying the
// same authenticated protocol as the NCCL backend (transport/nccl_wire.h:
// Begin with its HMAC tag, Ready, Layer, Trailer with its tag, Abort, Ack,
// Nack), plus the handles that let the receiver map this node's KV memory.
//
// Direction: the decode node *pulls*. This sender exports its registered KV
// regions (cudaIpcGetMemHandle) and one interprocess event per link
// (cudaIpcGetEventHandle), and only to a receiver that has answered Ready
// for a transfer (it holds the transfer's Post). For each layer it records
// the event on its link stream after the layer's producer (SendLayerAfter's
// ready_event, waited on the GPU: no host sync) and sends a Layer frame
// naming the source blocks as (region, offset, bytes). The receiver waits
// for the event on its own stream and copies device to device into the
// posted blocks under the ReceiveTable's write lease.
// Why pull and not push (the prefill writing into the decode node's blocks):
// the receiver then keeps the guarantee every backend gives, "after Cancel,
// a deadline or a failure, nothing is written into the posted blocks", which
// is what lets the decode node free and reuse them at once; a pushing
// sender could still be writing after the receiver gave up.
//
// The price is on this side: the receiver reads this node's blocks until it
// says it stopped (Ack, Nack, or Released after an Abort), so a transfer
// that fails here after a Layer frame went out completes (on_done / Wait)
// only once the receiver confirmed, or the link died, or stuck_grace_ms
// passed (then the link is closed; a receiver copy still running at that
// moment reads blocks this node may reuse, but its transfer fails anyway).
//
// Trust: a receiver that holds a Post for one transfer gets handles to all
// of this node's registered KV memory (read access in practice: the
// receiver's code only reads it). The router names the receiver, so this is
// the trust the NCCL backend also extends; document it in deployments.
// Cross-host endpoints fail at once: the Hello carries this host's boot id
// and the receiver refuses a different one (FailedPrecondition).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/device_send_handle.h"
#include "transport/kv_transport.h"

namespace pdserve::transport {

inline constexpr char kIpcScheme[] = "ipc:";

struct IpcSenderOptions {
  int device = 0;  // the GPU that holds the blocks to send
  int connect_timeout_ms = 5000;
  // How long after a transfer failed here the receiver may take to confirm
  // it stopped reading this node's blocks before the link is closed.
  int stuck_grace_ms = 2000;
};

class IpcKvSender final : public KvSender {
 public:
  static absl::StatusOr<std::unique_ptr<IpcKvSender>> Create(IpcSenderOptions options = {});
  ~IpcKvSender() override;

  // Makes [base, base + bytes) exportable: base must be the start of a
  // cudaMalloc allocation (CUDA IPC exports whole allocations), e.g. the KV
  // pool. Every view given to SendLayer must lie inside a registered region
  // (InvalidArgument otherwise). Call before the first transfer.
  absl::Status RegisterRegion(const void* base, size_t bytes);

  // The handle is a DeviceKvSendHandle (SendLayerAfter: the GPU-side wait).
  absl::StatusOr<std::unique_ptr<KvSendHandle>> StartTransfer(
      TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
      Deadline deadline, SendDoneCallback on_done = nullptr) override;
  KvTransportStats stats() const override;

  class Core;

 private:
  explicit IpcKvSender(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  std::shared_ptr<Core> core_;
};

namespace internal {
// This host's identity for the same-host check: the kernel's boot id
// (/proc/sys/kernel/random/boot_id), or the host name where that is missing.
std::string HostIdentity();
// 16 random bytes, fixed for this process: a Hello that carries them comes
// from this very process (sender and receiver in one process, as in tests
// and gpu_bench), where CUDA refuses to open the process's own IPC handles;
// the receiver then uses the pointers the Handle frames also carry. Nobody
// else can know them.
const std::string& ProcessNonce();
inline constexpr size_t kIpcNonceBytes = 16;
// A Handle frame's payload: the 64-byte CUDA handle, then the exporter's
// pointer (u64; used only within one process).
inline constexpr size_t kIpcHandleFrameBytes = 64 + 8;
// One block of an IPC Layer frame's payload.
inline constexpr size_t kIpcBlockEntryBytes = 24;  // region u32, pad u32, offset u64, bytes u64
inline constexpr int kIpcMaxRegions = 16;
}  // namespace internal

}  // namespace pdserve::transport
