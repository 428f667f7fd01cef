// KvReceiver over CUDA IPC: the decode side of transport/ipc_sender.h.
// Senders on this host connect to a TCP control port (endpoint
// "ipc:host:port") and, once one of their Begins proved its transfer's
// secret and this side answered Ready, send the handles of their KV memory
// and of their per-link event. For each Layer frame the link's worker waits
// (on the GPU) for the sender's event, then copies the named source blocks
// device to device into the posted blocks under the ReceiveTable's write
// lease, so Cancel, deadlines and every other guarantee of
// transport/kv_transport.h hold as for tcp and NCCL.
//
// A sender in this very process (tests, gpu_bench) proves it with the
// process's random nonce in its Hello; its pointers are then used as they
// are, since CUDA does not open a process's own IPC handles.
//
// Hostile senders: a Hello from another host is refused (Nack with
// FailedPrecondition, then the connection closes); handles are accepted only
// on a verified link; every block a Layer frame names is checked against
// the size of the region it claims before any copy (a sender cannot make
// this node read outside what it exported); limits as for the other
// backends.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/kv_transport.h"
#include "transport/receive_table.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport {

struct IpcReceiverOptions {
  int device = 0;  // the GPU that holds the posted blocks
  std::string listen_host = "127.0.0.1";
  uint16_t port = 0;           // 0: the kernel picks a free port
  std::string advertise_host;  // host in endpoint(); defaults to listen_host
  int max_connections = 64;    // each costs two threads
  // A connection's first Begin must prove its transfer's secret within this
  // long, else it is closed.
  int verify_timeout_ms = 10000;
  internal::WireLimits limits;
  internal::ReceiveTableOptions table;
};

class IpcKvReceiver final : public KvReceiver {
 public:
  static absl::StatusOr<std::unique_ptr<IpcKvReceiver>> Create(IpcReceiverOptions options);
  ~IpcKvReceiver() override;

  std::string endpoint() const override;
  absl::Status Post(TransferId xfer_id, const TransferSecret& secret,
                    std::vector<std::vector<BlockView>> layers, Deadline deadline,
                    ReceiveDoneCallback on_done) override;
  absl::Status Cancel(TransferId xfer_id) override;
  KvTransportStats stats() const override;

  class Impl;

 private:
  explicit IpcKvReceiver(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace pdserve::transport
