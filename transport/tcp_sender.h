// KvSender over TCP. See transport/README.md for the protocol.
//
// Why plain POSIX sockets + epoll rather than Boost.Asio: the two guarantees
// that matter here are about exactly which bytes touch which caller memory,
// and when: sendmsg() gathers straight from the caller's block views, and
// Abort() must know that no syscall is reading those views any more before it
// returns. With epoll the only thread doing I/O is ours, every partial write
// is visible, and the code stays small (no executor, strand or handler
// allocation to reason about, no heavy headers in a 2-core build).
//
// Threads: one event-loop thread per TcpKvSender owns every socket. Callers
// only append frames to a connection's queue (under the sender's mutex) and
// wake the loop, so SendLayer never blocks on the network.
//
// Connections: one per peer endpoint, opened lazily by the first transfer to
// it, reused by later ones, and dropped on any error (failing its in-flight
// transfers with Unavailable); the next transfer reconnects.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/kv_transport.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport {

struct TcpSenderOptions {
  // crc32 over every payload, verified by the receiver (DataLoss on
  // mismatch). Off by default: TCP already checksums segments, and crc32
  // would cost more than the copy-free send itself. Tests turn it on.
  bool checksum = false;
  // SO_SNDBUF/SO_RCVBUF; 0 keeps the kernel's autotuning.
  int socket_buffer_bytes = 4 << 20;
  // Largest trailer accepted by Finish (the receiver enforces the same).
  size_t max_trailer_bytes = 1 << 20;
  // Bounds the receiver's replies must respect.
  internal::WireLimits limits;
};

class TcpKvSender final : public KvSender {
 public:
  static absl::StatusOr<std::unique_ptr<TcpKvSender>> Create(TcpSenderOptions options = {});
  // Fails every in-flight transfer with Cancelled and joins the loop thread.
  ~TcpKvSender() override;

  absl::StatusOr<std::unique_ptr<KvSendHandle>> StartTransfer(
      TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
      Deadline deadline, SendDoneCallback on_done = nullptr) override;
  KvTransportStats stats() const override;

  class Core;  // shared with the handles, which may outlive the sender

 private:
  explicit TcpKvSender(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  std::shared_ptr<Core> core_;
};

}  // namespace pdserve::transport
