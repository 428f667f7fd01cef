// KvSender over NCCL: block views are GPU memory. The first transfer to a
// receiver endpoint ("nccl:host:port") opens a TCP control connection and a
// 2-rank NCCL communicator (this sender rank 0) whose unique id travels in
// the connection's Hello; later transfers to that endpoint reuse both. A
// link thread sends each layer once the receiver is Ready: a Layer control
// frame, then the blocks packed into a staging buffer (one gather kernel)
// and one ncclSend on the link's own stream, so the send overlaps the
// compute of later layers. Protocol: transport/nccl_wire.h.
//
// Failures: a transfer past its deadline fails with DeadlineExceeded (and
// the receiver is told); an NCCL operation stuck past its transfer's
// deadline plus a grace period, a dead control connection or an NCCL error
// abort the link's communicator (ncclCommAbort) and fail its transfers with
// Unavailable; the next transfer opens a fresh link.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/device_send_handle.h"
#include "transport/kv_transport.h"

namespace pdserve::transport {

struct NcclSenderOptions {
  int device = 0;  // the GPU that holds the blocks to send
  int connect_timeout_ms = 5000;
  int comm_init_timeout_ms = 60000;
  // How long an NCCL operation may stay in flight past its transfer's
  // deadline before the whole link is aborted.
  int stuck_grace_ms = 2000;
};

// The handle NcclKvSender returns (SendLayerAfter: see device_send_handle.h).
using NcclKvSendHandle = DeviceKvSendHandle;

class NcclKvSender final : public KvSender {
 public:
  static absl::StatusOr<std::unique_ptr<NcclKvSender>> Create(NcclSenderOptions options = {});
  // Fails every in-flight transfer with Cancelled and closes every link.
  ~NcclKvSender() override;

  // The handle is an NcclKvSendHandle.
  absl::StatusOr<std::unique_ptr<KvSendHandle>> StartTransfer(
      TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
      Deadline deadline, SendDoneCallback on_done = nullptr) override;
  KvTransportStats stats() const override;

  class Core;

 private:
  explicit NcclKvSender(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  std::shared_ptr<Core> core_;
};

}  // namespace pdserve::transport
