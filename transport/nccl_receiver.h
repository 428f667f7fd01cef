// KvReceiver over NCCL: block views are GPU memory. Senders connect to a TCP
// control port (endpoint "nccl:host:port"); each connection brings the
// NCCL unique id of a fresh 2-rank communicator (sender rank 0, this
// receiver rank 1) created lazily by the sender's first transfer. For every
// Layer frame the link thread receives the layer's bytes into a staging
// buffer with ncclRecv and, if the transfer is still live, unpacks them
// into the posted blocks (transport/nccl_wire.h has the protocol, and
// ReceiveTable the semantics shared with the tcp backend: deadlines, Cancel,
// size checks, no write after on_done).
//
// A sender whose control connection dies has its communicator aborted
// (ncclCommAbort) and its transfers failed with Unavailable. The two ranks
// must be on different GPUs: NCCL refuses two ranks on one device.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/kv_transport.h"
#include "transport/receive_table.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport {

struct NcclReceiverOptions {
  int device = 0;  // the GPU that holds the posted blocks
  std::string listen_host = "127.0.0.1";
  uint16_t port = 0;  // 0: the kernel picks a free port
  // Host in endpoint(); defaults to listen_host.
  std::string advertise_host;
  // A sender's communicator must be up within this long.
  int comm_init_timeout_ms = 60000;
  // Control connections (each costs two threads and, once verified, an NCCL
  // communicator): more are accepted and closed at once.
  int max_connections = 64;
  // A connection's first Begin must prove its transfer's secret within this
  // long, else it is closed; its communicator is joined only after that.
  int verify_timeout_ms = 10000;
  // What a sender's frames must respect; violations close the connection.
  internal::WireLimits limits;
  internal::ReceiveTableOptions table;
};

class NcclKvReceiver final : public KvReceiver {
 public:
  static absl::StatusOr<std::unique_ptr<NcclKvReceiver>> Create(NcclReceiverOptions options);
  ~NcclKvReceiver() override;

  std::string endpoint() const override;
  absl::Status Post(TransferId xfer_id, const TransferSecret& secret,
                    std::vector<std::vector<BlockView>> layers, Deadline deadline,
                    ReceiveDoneCallback on_done) override;
  absl::Status Cancel(TransferId xfer_id) override;
  KvTransportStats stats() const override;

  class Impl;

 private:
  explicit NcclKvReceiver(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace pdserve::transport
