// Moving KV-cache blocks from a prefill node to a decode node.
//
// The transport sees only {pointer, bytes} views of blocks: it knows nothing
// of the engine, the cache manager or the model. One layer's share of one
// block is one view (see kernels/cpu/attention.h for the layout). Backends,
// all behind these two interfaces: tcp (the CPU default, transport/tcp_*.h),
// loopback (in-process, for tests that run a whole cluster in one process,
// transport/loopback_transport.h), and for device memory NCCL (nccl_*.h),
// CUDA IPC (ipc_*.h) and host-staged tcp (host_staged.h), which live in the
// CUDA module (cuda_transports.h). kv_transport_factory.h picks one.
//
// Flow for one request R with transfer id X and secret S (both random, from
// the router):
//   decode node D: receiver->Post(X, S, blocks reserved for R, deadline, on_done)
//   prefill node P: h = sender->StartTransfer(X, S, D's endpoint, n_layers, ...)
//                   for each layer: compute, then h->SendLayer(layer, views)
//                   h->Finish(trailer);  // token #1 etc., serialized by P
//                   h->Wait() or on_done -> OK once D has every layer: free.
// P and D may run in either order: data for an X that D has not posted yet
// waits (at the sender, without a copy) until the Post or the deadline.
//
// Every failure is an absl::Status delivered exactly once, never a hang: a
// deadline bounds every wait, and a peer that goes away fails its in-flight
// transfers promptly (Unavailable).
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/clock.h"

namespace pdserve::transport {

// A local monotonic time. Deadlines never cross machines as absolute values:
// backends send the remaining budget.
using Deadline = MonoClock::time_point;

// Identifies one request's KV transfer on both nodes. The router allocates a
// fresh one per attempt: a receiver remembers how recent transfers ended
// (for a few seconds) so that a late sender or a late Post fails at once.
struct TransferId {
  uint64_t value = 0;

  friend bool operator==(TransferId a, TransferId b) { return a.value == b.value; }
  friend bool operator!=(TransferId a, TransferId b) { return a.value != b.value; }
  friend bool operator<(TransferId a, TransferId b) { return a.value < b.value; }
  template <typename H>
  friend H AbslHashValue(H h, TransferId id) {
    return H::combine(std::move(h), id.value);
  }
};

inline constexpr size_t kTransferSecretBytes = 16;
// A transfer's secret, issued by the router with its id and given to both
// ends: the sender proves it knows it (transport/transfer_auth.h), so nobody
// else can open, block or complete the transfer.
class TransferSecret {
 public:
  TransferSecret() = default;  // all zero; real secrets: Random or FromBytes
  // InvalidArgument unless bytes is exactly 16 bytes (as carried in protos).
  static absl::StatusOr<TransferSecret> FromBytes(std::string_view bytes);
  // 16 bytes from the kernel CSPRNG.
  static TransferSecret Random();

  std::string_view bytes() const {
    return {reinterpret_cast<const char*>(key_.data()), key_.size()};
  }

 private:
  std::array<uint8_t, kTransferSecretBytes> key_{};
};

// Destination: one layer's share of one block on the receiving node.
struct BlockView {
  void* data = nullptr;  // (bytes) host memory for tcp and loopback
  size_t bytes = 0;
};

// Source: one layer's share of one block on the sending node.
struct ConstBlockView {
  const void* data = nullptr;  // (bytes)
  size_t bytes = 0;
};

// Counters for metrics, per sender or receiver, monotonic since creation.
struct KvTransportStats {
  static constexpr int kNumCodes = 17;  // absl::StatusCode values 0..16

  int64_t transfers_started = 0;  // StartTransfer / Post accepted
  int64_t transfers_ok = 0;
  int64_t transfers_failed = 0;
  int64_t bytes = 0;    // layer payload bytes sent / received
  int64_t busy_ns = 0;  // summed start-to-completion time of finished transfers
  // Failed transfers by absl::StatusCode: a stable, small set of metric labels
  // (DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE, INVALID_ARGUMENT, DATA_LOSS,
  // ABORTED, RESOURCE_EXHAUSTED, ...).
  std::array<int64_t, kNumCodes> failures_by_code{};
  // Receiver only: what hostile or broken peers tried.
  int64_t begins_refused = 0;         // wrong tag, over a cap, replayed, duplicate
  int64_t connections_refused = 0;    // over the connection cap: accepted, then closed
  int64_t connections_timed_out = 0;  // no verified Begin in time
  int64_t protocol_errors = 0;        // malformed frames: the connection was closed

  int64_t failures(absl::StatusCode code) const {
    int i = static_cast<int>(code);
    return i >= 0 && i < kNumCodes ? failures_by_code[i] : 0;
  }
  double seconds() const { return static_cast<double>(busy_ns) * 1e-9; }
};

// Runs exactly once per accepted transfer, on a transport thread (or on the
// thread calling Abort/Cancel). It must not block for long.
using SendDoneCallback = absl::AnyInvocable<void(absl::Status)>;
// When a transfer's layers landed (MonoNowNs; 0 where none did): the
// receiving side's view of the KV transfer, for per-request timelines.
struct ReceiveTiming {
  int64_t first_layer_ns = 0;  // the first layer was in its blocks
  int64_t last_layer_ns = 0;   // the last one was
};
// trailer: the bytes given to KvSendHandle::Finish; empty unless status is OK.
using ReceiveDoneCallback =
    absl::AnyInvocable<void(absl::Status, std::string trailer, ReceiveTiming timing)>;

// One outgoing transfer. Not thread-safe: one thread (the compute thread)
// calls SendLayer/Finish; Wait/Abort may come from any thread.
class KvSendHandle {
 public:
  // Aborts the transfer if it has not completed.
  virtual ~KvSendHandle() = default;

  // Enqueues one layer's blocks and returns at once; never waits on the
  // network. The views must stay valid until the transfer completes (Wait
  // returns, on_done runs, or Abort returns). Each layer in [0, n_layers) is
  // sent exactly once, in any order. Errors: InvalidArgument for a bad or
  // repeated layer; the transfer's final status if it already failed.
  virtual absl::Status SendLayer(int32_t layer, absl::Span<const ConstBlockView> blocks) = 0;

  // Ends the transfer after every layer was given to SendLayer; the trailer
  // (a few bytes: token #1 and its logprob) reaches the receiver's on_done.
  virtual absl::Status Finish(std::string trailer) = 0;

  // Blocks until the receiver acknowledged the whole transfer (OK) or it
  // failed: DeadlineExceeded, Unavailable (peer gone), Cancelled (aborted
  // here), or the receiver's own verdict (Cancelled, InvalidArgument for a
  // size mismatch, DataLoss for a checksum mismatch, ...). Once it returns,
  // the transport no longer reads the views: the blocks may be freed.
  virtual absl::Status Wait() = 0;

  // The final status if the transfer completed, else nullopt. Never blocks.
  virtual std::optional<absl::Status> Poll() = 0;

  // Stops the transfer (the receiver sees Aborted). When Abort returns, the
  // transport no longer reads the views. No-op after completion.
  virtual void Abort() = 0;
};

class KvSender {
 public:
  virtual ~KvSender() = default;

  // Opens a transfer of n_layers layers to the receiver at peer (an endpoint
  // string from KvReceiver::endpoint()). deadline bounds the whole transfer,
  // acknowledgement included. on_done (optional) gets the same status as
  // Wait(). Returns an error, and never calls on_done, for bad arguments,
  // a peer that cannot be reached right now, or a duplicate in-flight id.
  // secret: the transfer's secret, as the receiver's Post has it; a receiver
  // refuses a transfer whose sender does not prove it (PermissionDenied).
  virtual absl::StatusOr<std::unique_ptr<KvSendHandle>> StartTransfer(
      TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
      Deadline deadline, SendDoneCallback on_done = nullptr) = 0;

  virtual KvTransportStats stats() const = 0;
};

// Thread-safe.
class KvReceiver {
 public:
  // Fails every live Post with Cancelled and its senders with Unavailable.
  virtual ~KvReceiver() = default;

  // Where senders reach this receiver: "host:port" for tcp,
  // "loopback:NAME" for loopback.
  virtual std::string endpoint() const = 0;

  // Posts the destination blocks for xfer_id: layers[layer][i] receives the
  // sender's i-th block of that layer; counts and sizes must match what is
  // sent (a mismatch fails the transfer with InvalidArgument, nothing is
  // written past a view). The views must stay valid until on_done runs.
  // on_done runs exactly once: OK with the trailer once every layer landed;
  // DeadlineExceeded at the deadline; Cancelled after Cancel; Aborted if the
  // sender gave up; Unavailable if the sender's connection died; DataLoss on
  // a checksum mismatch. After a failure the blocks' contents are undefined
  // but nothing is written into them anymore. Returns an error (and never
  // calls on_done) for bad arguments or an id already in use.
  // Only a sender that proves it knows secret is matched with this Post;
  // others are refused (PermissionDenied) without affecting it.
  virtual absl::Status Post(TransferId xfer_id, const TransferSecret& secret,
                            std::vector<std::vector<BlockView>> layers, Deadline deadline,
                            ReceiveDoneCallback on_done) = 0;

  // Cancels a live Post: on_done(Cancelled) runs before Cancel returns, and
  // from then on no byte is written into its blocks; data still in flight is
  // discarded. NotFound if there is no live Post for xfer_id.
  virtual absl::Status Cancel(TransferId xfer_id) = 0;

  virtual KvTransportStats stats() const = 0;
};

// The budget a node gives one request's transfer, from the request's
// kv_deadline_ms: 0 (unset) is kDefaultKvBudget, anything else must lie in
// [1 ms, kMaxKvBudget] (InvalidArgument otherwise: a peer-supplied value
// never reaches chrono arithmetic unchecked).
inline constexpr std::chrono::milliseconds kDefaultKvBudget{30000};
inline constexpr std::chrono::milliseconds kMaxKvBudget{600000};
absl::StatusOr<std::chrono::milliseconds> KvBudgetFromRequest(int64_t kv_deadline_ms);

// Checks a KV endpoint taken from a request before anything connects to it:
// "host:port" or "[v6]:port" (tcp), "nccl:host:port", "ipc:host:port", or
// "loopback:NAME";
// at most 256 characters, host names of letters, digits, '.', '-', '_'.
// InvalidArgument with the reason otherwise.
absl::Status ValidateKvEndpoint(std::string_view endpoint);

// Sum of the views' sizes.
size_t TotalBytes(absl::Span<const BlockView> views);
size_t TotalBytes(absl::Span<const ConstBlockView> views);

}  // namespace pdserve::transport
