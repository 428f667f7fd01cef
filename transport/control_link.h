// The control connection both GPU backends (NCCL: nccl_*, CUDA IPC: ipc_*)
// run beside their data path: one TCP connection per (sender, receiver)
// pair carrying the frames of nccl_wire.h, a reader thread for incoming
// frames and a worker thread for the backend's device work. This is the part
// the two backends share; only how a layer's bytes move differs.
//
//   ControlLink      one connection: socket, serialized writes, the two
//                    threads, closing once.
//   ControlPort      a receiver's listening side: accepts up to
//                    max_connections links, runs their threads, replies
//                    (Ready, Ack, Nack) for its ReceiveTable, announces
//                    Begins, closes links that prove no secret in time, and
//                    joins dead links. A backend subclasses it with its
//                    link type, ReadLoop and WorkLoop.
//   SendXferBase     a sender's per-transfer bookkeeping (layers given,
//                    Finish, outcome) and the frames it builds.
//   ConnectControl   a sender's connection to "scheme:host:port".
// Plain host code: the emulated tests build it as it is.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "transport/device_send_handle.h"
#include "transport/kv_transport.h"
#include "transport/nccl_wire.h"
#include "transport/receive_table.h"
#include "transport/tcp_socket.h"
#include "transport/tcp_wire.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport::internal {

// One control connection. A backend derives its link from it and adds its
// own state (work queue, device resources).
struct ControlLink {
  virtual ~ControlLink() = default;

  LinkId id = 0;     // receiver side: the ReceiveTable's link id
  std::string peer;  // for messages: the sender's link name, or the receiver's endpoint
  UniqueFd fd;
  std::mutex write_mu;  // frames out, one at a time
  std::mutex mu;        // guards closing, and the backend's queues
  std::condition_variable cv;
  bool closing = false;  // guarded by mu: the worker stops
  std::atomic<bool> dead{false};
  std::thread reader, worker;

  // Writes one whole frame (blocking); Unavailable once the link is closed.
  absl::Status Write(const NcclFrame& f);
  // The first call returns true: marks the link dead, runs `first` (e.g.
  // abort an NCCL communicator the worker may block in), shuts the socket
  // down (the reader's read fails), sets closing and wakes the worker. Later
  // calls return false and do nothing.
  bool Close(const std::function<void()>& first = nullptr);
  // Joins both threads, except the calling thread itself.
  void JoinThreads();
};

// Starts a link's reader and worker threads. Both are assigned before
// either runs: a reader that fails at once closes the link, and whoever then
// joins it reads l->worker.
template <typename Link, typename Read, typename Work>
void StartLinkThreads(const std::shared_ptr<Link>& l, Read read, Work work) {
  std::lock_guard<std::mutex> start(l->mu);
  l->reader = std::thread([l, read] {
    { std::lock_guard<std::mutex> started(l->mu); }
    read(l);
  });
  l->worker = std::thread([l, work] {
    { std::lock_guard<std::mutex> started(l->mu); }
    work(l);
  });
}

struct ControlPortOptions {
  const char* name = "";    // "NCCL receiver", "IPC receiver": logs and errors
  const char* scheme = "";  // endpoint prefix: "nccl:", "ipc:"
  std::string listen_host;
  uint16_t port = 0;
  std::string advertise_host;  // defaults to listen_host
  int max_connections = 64;
  int verify_timeout_ms = 10000;
  WireLimits limits;
  ReceiveTableOptions table;
};

// The port options from a receiver's own options (NcclReceiverOptions,
// IpcReceiverOptions: the same fields).
template <typename ReceiverOptions>
ControlPortOptions MakePortOptions(const ReceiverOptions& o, const char* name, const char* scheme) {
  ControlPortOptions p;
  p.name = name;
  p.scheme = scheme;
  p.listen_host = o.listen_host;
  p.port = o.port;
  p.advertise_host = o.advertise_host;
  p.max_connections = o.max_connections;
  p.verify_timeout_ms = o.verify_timeout_ms;
  p.limits = o.limits;
  p.table = o.table;
  return p;
}

class ControlPort : public ReplySink {
 public:
  explicit ControlPort(ControlPortOptions options);
  // Stop() must have run (the backend's destructor calls it).
  ~ControlPort() override = default;

  // Listens and starts the accept and timer threads.
  absl::Status Start();
  // Fails every transfer (Cancelled), closes every link, joins every thread.
  void Stop();

  const std::string& endpoint() const { return endpoint_; }
  ReceiveTable& table() { return table_; }
  KvTransportStats stats() const { return counters_.Snapshot(); }

  // ReplySink: Ready, Ack and Nack frames to the sender.
  void Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) override;
  void WakeForDeadline() override;

 protected:
  // The backend's link, and its two threads' bodies.
  virtual std::shared_ptr<ControlLink> NewLink() = 0;
  virtual void ReadLoop(const std::shared_ptr<ControlLink>& l) = 0;
  virtual void WorkLoop(const std::shared_ptr<ControlLink>& l) = 0;
  // When a link closes, before its socket does (NCCL: abort the
  // communicator, which unblocks the worker).
  virtual void OnClose(ControlLink& l) {}
  // Once a dead link's threads ended: release its device resources.
  virtual void OnJoined(ControlLink& l) {}

  // Closes the link once and fails its transfers with Unavailable.
  void Kill(const std::shared_ptr<ControlLink>& l, const absl::Status& why);
  // A frame that breaks the protocol: counted, the link closed.
  void Bad(const std::shared_ptr<ControlLink>& l, const std::string& what);
  // The next frame of at most max_payload bytes; false (the link is then
  // closed) when the peer left or sent a corrupt frame.
  bool ReadFrame(const std::shared_ptr<ControlLink>& l, NcclFrame* f, uint32_t max_payload);
  // The largest control frame a sender may send: a Layer's block table
  // (entry_bytes per block) or a trailer with its tag.
  uint32_t MaxPayload(uint64_t entry_bytes) const;
  // Announces a Begin frame to the table; false (the link is then closed)
  // when the frame is malformed.
  bool Announce(const std::shared_ptr<ControlLink>& l, const NcclFrame& f);
  // Waits until one of the link's Begins proved its transfer's secret and
  // `ready` (checked under l->mu) holds. False when the link closed first, or
  // when verify_timeout_ms passed (the link is then closed).
  bool AwaitVerified(const std::shared_ptr<ControlLink>& l, const std::function<bool()>& ready);

  const ControlPortOptions port_options_;
  TransferCounters counters_;
  ReceiveTable table_;

 private:
  std::shared_ptr<ControlLink> FindLink(LinkId id);
  void AcceptLoop();
  void TimerLoop();  // deadlines, and joining dead links

  UniqueFd listen_;
  std::string endpoint_;
  std::thread acceptor_, timer_;
  std::mutex mu_;
  std::condition_variable timer_cv_;
  bool stopping_ = false;
  LinkId next_link_ = 1;
  absl::flat_hash_map<LinkId, std::shared_ptr<ControlLink>> links_;
  std::vector<std::shared_ptr<ControlLink>> dead_;
};

// A Trailer frame's payload: the trailer bytes, then their 32-byte tag.
// InvalidArgument when the tag is missing.
absl::Status SplitTrailer(std::string payload, std::string* trailer, AuthTag* tag);
// An Abort frame's reason (a status code; 0 when out of range).
int32_t AbortCode(const NcclFrame& f);

// A sender's links, one per receiver endpoint (ControlLink::peer), and the
// watchdog thread that every 10 ms (or as soon as a link died) joins dead
// links and checks the live ones (deadlines, stuck operations).
template <typename Link>
class SenderLinks {
 public:
  using LinkPtr = std::shared_ptr<Link>;

  // join: a dead link's threads (and what they held); check: one live link.
  void Start(std::function<void(const LinkPtr&)> join, std::function<void(const LinkPtr&)> check) {
    watchdog_ = std::thread([this, join = std::move(join), check = std::move(check)] {
      for (;;) {
        std::vector<LinkPtr> live, reap;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait_for(lock, std::chrono::milliseconds(10),
                       [&] { return stopping_ || !dead_.empty(); });
          if (stopping_) return;
          for (auto& [endpoint, l] : links_) live.push_back(l);
          reap.swap(dead_);
        }
        for (auto& l : reap) join(l);
        for (auto& l : live) check(l);
      }
    });
  }
  // Stops the watchdog; returns every link, live or dead, now forgotten.
  std::vector<LinkPtr> Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<LinkPtr> all;
    for (auto& [endpoint, l] : links_) all.push_back(l);
    all.insert(all.end(), dead_.begin(), dead_.end());
    links_.clear();
    dead_.clear();
    return all;
  }
  // Held while a link to a new endpoint is made: one connect at a time.
  std::mutex& create_mu() { return create_mu_; }
  // The live link to `endpoint`, or null; Cancelled ("<who> shut down") once
  // stopping.
  absl::StatusOr<LinkPtr> Find(const std::string& endpoint, const char* who) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::CancelledError(absl::StrCat(who, " shut down"));
    auto it = links_.find(endpoint);
    if (it != links_.end() && !it->second->dead) return it->second;
    return LinkPtr();
  }
  void Add(const LinkPtr& l) {
    std::lock_guard<std::mutex> lock(mu_);
    links_[l->peer] = l;
  }
  // l died: no longer its endpoint's link; the watchdog joins it.
  void Retire(const LinkPtr& l) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(l->peer);
    if (it != links_.end() && it->second == l) links_.erase(it);
    dead_.push_back(l);
    cv_.notify_all();
  }
  // No link was ever made (or all were forgotten by Stop).
  bool Empty() {
    std::lock_guard<std::mutex> lock(mu_);
    return links_.empty() && dead_.empty();
  }

 private:
  std::mutex create_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;                 // guarded by mu_
  std::map<std::string, LinkPtr> links_;  // guarded by mu_
  std::vector<LinkPtr> dead_;             // guarded by mu_
  std::thread watchdog_;
};

// A sender's state for one transfer; the backend adds its own fields.
// Fields below mu are guarded by it.
struct SendXferBase {
  TransferId xfer;
  TransferSecret secret;
  int32_t n_layers = 0;
  Deadline deadline;
  int64_t start_ns = 0;

  std::mutex mu;
  std::condition_variable cv;
  SendDoneCallback on_done;
  std::vector<bool> given;
  int32_t n_given = 0;
  bool finish_called = false;
  bool ready = false;  // the receiver posted: data may flow
  bool trailer_sent = false;
  std::optional<absl::Status> final_status;  // decided, callbacks maybe pending
  bool done = false;                         // callbacks ran

  void Init(TransferId id, const TransferSecret& s, int32_t layers, Deadline d,
            SendDoneCallback done_cb);
  // Under mu: records that `layer` (>= 0) or, for -1, Finish was handed
  // over; the outcome when already decided, InvalidArgument or
  // FailedPrecondition for a layer out of range or given twice, Finish twice
  // or before every layer.
  absl::Status GiveLocked(int32_t layer);
  // Blocks until done.
  void WaitDone();
  // The outcome once done; nullopt before.
  std::optional<absl::Status> PollDone();
};

std::string XferName(TransferId x);

// The send handle of both backends, over a Core that provides
//   absl::Status EnqueueLayer(const std::shared_ptr<Xfer>&, int32_t layer,
//                             absl::Span<const ConstBlockView>, void* ready_event);
//   absl::Status EnqueueTrailer(const std::shared_ptr<Xfer>&, std::string trailer);
//   void Complete(const std::shared_ptr<Xfer>&, absl::Status, bool notify_peer);
// Destroying it aborts the transfer (and waits until the views are free).
template <typename Core, typename Xfer>
class ControlSendHandle final : public DeviceKvSendHandle {
 public:
  ControlSendHandle(std::shared_ptr<Core> core, std::shared_ptr<Xfer> t)
      : core_(std::move(core)), t_(std::move(t)) {}
  ~ControlSendHandle() override { Abort(); }

  absl::Status SendLayer(int32_t layer, absl::Span<const ConstBlockView> blocks) override {
    return SendLayerAfter(layer, blocks, nullptr);
  }
  absl::Status SendLayerAfter(int32_t layer, absl::Span<const ConstBlockView> blocks,
                              void* ready_event) override {
    if (layer < 0) return absl::InvalidArgumentError("negative layer");
    return core_->EnqueueLayer(t_, layer, blocks, ready_event);
  }
  absl::Status Finish(std::string trailer) override {
    return core_->EnqueueTrailer(t_, std::move(trailer));
  }
  absl::Status Wait() override {
    t_->WaitDone();
    return *t_->PollDone();
  }
  std::optional<absl::Status> Poll() override { return t_->PollDone(); }
  void Abort() override {
    core_->Complete(t_, absl::CancelledError(absl::StrCat(XferName(t_->xfer), " aborted")), true);
    t_->WaitDone();
  }

 private:
  std::shared_ptr<Core> core_;
  std::shared_ptr<Xfer> t_;
};

// The Trailer frame for `trailer`: its bytes, then their tag.
NcclFrame MakeTrailerFrame(const TransferSecret& secret, TransferId xfer,
                           const std::string& trailer);

// A sender's control connection to `endpoint` ("<scheme>host:port"), made
// within timeout_ms; `who` ("NCCL sender") prefixes errors. Unavailable when
// the receiver cannot be reached.
absl::StatusOr<UniqueFd> ConnectControl(const std::string& endpoint, const char* scheme,
                                        int timeout_ms, const char* who);

}  // namespace pdserve::transport::internal
