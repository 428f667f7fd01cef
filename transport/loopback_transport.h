// In-process KV transport for tests that run a whole cluster in one process.
//
// Same semantics as tcp (the same ReceiveTable enforces them): data waits at
// the sender until the receiver posts, deadlines, Cancel, size checks, and a
// receiver that goes away fails its senders with Unavailable. Each receiver
// has a worker thread that memcpy()s from the sender's views into the posted
// views, so SendLayer returns at once as it does over the network.
//
// Receivers register by name in a LoopbackNetwork that the test (or the
// in-process cluster) owns and passes to every node: no process-wide state.
#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "transport/kv_transport.h"
#include "transport/receive_table.h"

namespace pdserve::transport {

namespace internal {
class LoopbackPeer;
class LoopbackSenderCore;
}  // namespace internal

inline constexpr char kLoopbackScheme[] = "loopback:";

// Endpoint name -> receiver. Outlives the senders and receivers using it.
class LoopbackNetwork {
 public:
  LoopbackNetwork() = default;
  LoopbackNetwork(const LoopbackNetwork&) = delete;
  LoopbackNetwork& operator=(const LoopbackNetwork&) = delete;
  ~LoopbackNetwork();

 private:
  friend class LoopbackKvReceiver;
  friend class LoopbackKvSender;
  friend class internal::LoopbackSenderCore;

  absl::Status Register(const std::string& endpoint, std::shared_ptr<internal::LoopbackPeer> peer);
  void Unregister(const std::string& endpoint);
  std::shared_ptr<internal::LoopbackPeer> Find(const std::string& endpoint);

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<internal::LoopbackPeer>> peers_
      ABSL_GUARDED_BY(mu_);
};

struct LoopbackReceiverOptions {
  internal::ReceiveTableOptions table;
};

class LoopbackKvReceiver final : public KvReceiver {
 public:
  // Registers "loopback:<name>"; AlreadyExists if the name is taken.
  static absl::StatusOr<std::unique_ptr<LoopbackKvReceiver>> Create(
      LoopbackNetwork* network, const std::string& name, LoopbackReceiverOptions options = {});
  ~LoopbackKvReceiver() override;

  std::string endpoint() const override { return endpoint_; }
  absl::Status Post(TransferId xfer_id, const TransferSecret& secret,
                    std::vector<std::vector<BlockView>> layers, Deadline deadline,
                    ReceiveDoneCallback on_done) override;
  absl::Status Cancel(TransferId xfer_id) override;
  KvTransportStats stats() const override;

 private:
  LoopbackKvReceiver(LoopbackNetwork* network, std::string endpoint,
                     std::shared_ptr<internal::LoopbackPeer> peer);

  LoopbackNetwork* const network_;
  const std::string endpoint_;
  std::shared_ptr<internal::LoopbackPeer> peer_;
};

class LoopbackKvSender final : public KvSender {
 public:
  explicit LoopbackKvSender(LoopbackNetwork* network);
  // Aborts every in-flight transfer (Cancelled).
  ~LoopbackKvSender() override;

  absl::StatusOr<std::unique_ptr<KvSendHandle>> StartTransfer(
      TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
      Deadline deadline, SendDoneCallback on_done = nullptr) override;
  KvTransportStats stats() const override;

 private:
  std::shared_ptr<internal::LoopbackSenderCore> core_;
};

}  // namespace pdserve::transport
