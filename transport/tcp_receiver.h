// KvReceiver over TCP: an acceptor and one epoll event loop thread that reads
// every frame header itself and readv()s layer data straight into the posted
// block views (no staging copy). See tcp_sender.h for why epoll, and
// transport/README.md for the protocol.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/kv_transport.h"
#include "transport/receive_table.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport {

struct TcpReceiverOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t port = 0;  // 0: the kernel picks a free port
  // Host in endpoint(); defaults to listen_host, or the machine's hostname
  // when listening on a wildcard address.
  std::string advertise_host;
  // SO_SNDBUF/SO_RCVBUF; 0 keeps the kernel's autotuning.
  int socket_buffer_bytes = 4 << 20;
  // Further connections are accepted and closed at once (counted in
  // stats().connections_refused).
  int max_connections = 1024;
  // Connections none of whose announcements has proved its transfer's
  // secret yet: at most this many at a time (further ones are refused as
  // above), each closed if it has not done so within verify_timeout. A
  // flood of anonymous connections so cannot crowd out the senders already
  // proven, and holds no slot for long.
  int max_unverified_connections = 128;
  std::chrono::milliseconds verify_timeout{10000};
  // What a sender's frames must respect; violations close the connection.
  internal::WireLimits limits;
  internal::ReceiveTableOptions table;
};

class TcpKvReceiver final : public KvReceiver {
 public:
  static absl::StatusOr<std::unique_ptr<TcpKvReceiver>> Create(TcpReceiverOptions options = {});
  ~TcpKvReceiver() override;

  std::string endpoint() const override;
  absl::Status Post(TransferId xfer_id, const TransferSecret& secret,
                    std::vector<std::vector<BlockView>> layers, Deadline deadline,
                    ReceiveDoneCallback on_done) override;
  absl::Status Cancel(TransferId xfer_id) override;
  KvTransportStats stats() const override;

 private:
  class Impl;
  explicit TcpKvReceiver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdserve::transport
