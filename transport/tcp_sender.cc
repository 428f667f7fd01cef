#include "transport/tcp_sender.h"

#include <limits.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/check.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "transport/tcp_frame_reader.h"
#include "transport/tcp_send_queue.h"
#include "transport/tcp_socket.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {

using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;
using internal::OutFrame;

namespace {

constexpr int kMaxIov = IOV_MAX;
constexpr int kMaxBatchFrames = 64;

std::string XferName(TransferId xfer) { return absl::StrCat("transfer ", xfer.value); }

struct Transfer {
  TransferId xfer;
  TransferSecret secret;
  std::string peer;
  uint64_t conn_id = 0;
  int32_t n_layers = 0;
  Deadline deadline;
  int64_t start_ns = 0;
  std::vector<std::vector<ConstBlockView>> layers;  // [layer][block], borrowed
  std::vector<bool> given;
  int32_t n_given = 0;
  bool ready = false;     // the receiver posted: layers may go out
  bool finished = false;  // Finish() was called
  std::string trailer;
  int queued_frames = 0;  // frames of this transfer still in the queue
  bool done = false;
  absl::Status status;
  SendDoneCallback on_done;
};

struct Conn {
  uint64_t id = 0;
  std::string endpoint;
  internal::UniqueFd fd;
  bool connecting = true;
  bool want_out = false;  // EPOLLOUT is registered
  bool writing = false;   // the loop is sending frames outside the lock
  internal::SendQueue queue;
  absl::flat_hash_map<TransferId, std::shared_ptr<Transfer>> transfers;
  internal::SmallFrameReader reader;  // the loop thread only
};

using Deferred = std::vector<std::pair<SendDoneCallback, absl::Status>>;

void RunDeferred(Deferred& deferred) {
  for (auto& [callback, status] : deferred) {
    if (callback) std::move(callback)(std::move(status));
  }
}

}  // namespace

class TcpKvSender::Core {
 public:
  Core(TcpSenderOptions options, internal::Poller poller)
      : options_(std::move(options)), poller_(std::move(poller)) {}

  void Start() {
    loop_ = std::thread([this] { Loop(); });
  }
  void Stop();

  absl::StatusOr<std::shared_ptr<Transfer>> StartTransfer(TransferId xfer,
                                                          const TransferSecret& secret,
                                                          const std::string& peer, int32_t n_layers,
                                                          Deadline deadline,
                                                          SendDoneCallback on_done);
  absl::Status SendLayer(Transfer* t, int32_t layer, absl::Span<const ConstBlockView> blocks);
  absl::Status Finish(Transfer* t, std::string trailer);
  absl::Status Wait(Transfer* t);
  std::optional<absl::Status> Poll(Transfer* t);
  void Abort(Transfer* t);

  KvTransportStats stats() const { return counters_.Snapshot(); }

 private:
  void Loop();
  // Sends queued frames until the queue is empty or the socket is full.
  absl::Status Flush(Conn* conn);
  absl::Status HandleReadable(Conn* conn);
  void HandleFrame(Conn* conn, const FrameHeader& h, std::string payload, Deferred* deferred);
  void FailConn(const std::shared_ptr<Conn>& conn, const absl::Status& why);
  Deadline ExpireDue(Deadline now);

  void EnqueueLocked(Conn* conn, Transfer* t, std::unique_ptr<OutFrame> f)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueLayerLocked(Conn* conn, Transfer* t, int32_t layer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueTrailerLocked(Conn* conn, Transfer* t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Completes t once. On failure its unsent data frames are dropped and, if
  // notify_peer, an Abort frame tells the receiver (which then fails or
  // forgets the transfer). The caller makes
  // sure the loop is not sending t's frames (conn->writing is false).
  void CompleteLocked(Transfer* t, absl::Status status, bool notify_peer, Deferred* deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetWantOutLocked(Conn* conn, bool want) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Conn* FindConnLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TcpSenderOptions options_;
  internal::Poller poller_;
  internal::TransferCounters counters_;
  std::thread loop_;

  mutable absl::Mutex mu_;
  absl::CondVar write_done_;
  absl::flat_hash_map<std::string, std::shared_ptr<Conn>> by_endpoint_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<Conn>> by_id_ ABSL_GUARDED_BY(mu_);
  uint64_t next_conn_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

class TcpSendHandle final : public KvSendHandle {
 public:
  TcpSendHandle(std::shared_ptr<TcpKvSender::Core> core, std::shared_ptr<Transfer> t)
      : core_(std::move(core)), t_(std::move(t)) {}
  ~TcpSendHandle() override { core_->Abort(t_.get()); }

  absl::Status SendLayer(int32_t layer, absl::Span<const ConstBlockView> blocks) override {
    return core_->SendLayer(t_.get(), layer, blocks);
  }
  absl::Status Finish(std::string trailer) override {
    return core_->Finish(t_.get(), std::move(trailer));
  }
  absl::Status Wait() override { return core_->Wait(t_.get()); }
  std::optional<absl::Status> Poll() override { return core_->Poll(t_.get()); }
  void Abort() override { core_->Abort(t_.get()); }

 private:
  std::shared_ptr<TcpKvSender::Core> core_;
  std::shared_ptr<Transfer> t_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TcpKvSender>> TcpKvSender::Create(TcpSenderOptions options) {
  PDS_ASSIGN_OR_RETURN(internal::Poller poller, internal::Poller::Create());
  auto core = std::make_shared<Core>(std::move(options), std::move(poller));
  core->Start();
  return std::unique_ptr<TcpKvSender>(new TcpKvSender(std::move(core)));
}

TcpKvSender::~TcpKvSender() { core_->Stop(); }

absl::StatusOr<std::unique_ptr<KvSendHandle>> TcpKvSender::StartTransfer(
    TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
    Deadline deadline, SendDoneCallback on_done) {
  PDS_ASSIGN_OR_RETURN(
      std::shared_ptr<Transfer> t,
      core_->StartTransfer(xfer_id, secret, peer, n_layers, deadline, std::move(on_done)));
  return std::unique_ptr<KvSendHandle>(new TcpSendHandle(core_, std::move(t)));
}

KvTransportStats TcpKvSender::stats() const { return core_->stats(); }

// ---------------------------------------------------------------------------
// Caller-facing operations.

absl::StatusOr<std::shared_ptr<Transfer>> TcpKvSender::Core::StartTransfer(
    TransferId xfer, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
    Deadline deadline, SendDoneCallback on_done) {
  if (n_layers <= 0 || static_cast<uint32_t>(n_layers) > options_.limits.max_layers) {
    return absl::InvalidArgumentError(absl::StrCat(XferName(xfer), ": n_layers ", n_layers));
  }
  PDS_ASSIGN_OR_RETURN(internal::HostPort hp, internal::ParseHostPort(peer));
  std::shared_ptr<Conn> conn;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::FailedPreconditionError("sender is shutting down");
    auto it = by_endpoint_.find(peer);
    if (it != by_endpoint_.end()) conn = it->second;
  }
  if (conn == nullptr) {
    // Resolve and connect outside the lock: getaddrinfo may block.
    PDS_ASSIGN_OR_RETURN(internal::UniqueFd fd, internal::StartConnectTcp(hp));
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::FailedPreconditionError("sender is shutting down");
    auto it = by_endpoint_.find(peer);
    if (it != by_endpoint_.end()) {
      conn = it->second;  // another thread connected meanwhile; ours closes
    } else {
      conn = std::make_shared<Conn>();
      conn->id = next_conn_id_++;
      conn->endpoint = peer;
      conn->fd = std::move(fd);
      PDS_RETURN_IF_ERROR(poller_.Add(conn->fd.get(), EPOLLIN | EPOLLOUT, conn->id));
      conn->want_out = true;
      by_endpoint_[peer] = conn;
      by_id_[conn->id] = conn;
    }
  }

  auto t = std::make_shared<Transfer>();
  t->xfer = xfer;
  t->secret = secret;
  t->peer = peer;
  t->conn_id = conn->id;
  t->n_layers = n_layers;
  t->deadline = deadline;
  t->start_ns = MonoNowNs();
  t->layers.resize(n_layers);
  t->given.assign(n_layers, false);
  t->on_done = std::move(on_done);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::FailedPreconditionError("sender is shutting down");
    if (FindConnLocked(conn->id) == nullptr) {
      return absl::UnavailableError(absl::StrCat("connection to ", peer, " failed just now"));
    }
    if (conn->transfers.contains(xfer)) {
      return absl::AlreadyExistsError(absl::StrCat(XferName(xfer), " to ", peer, " is in flight"));
    }
    conn->transfers[xfer] = t;
    counters_.Started();
    EnqueueLocked(conn.get(), t.get(), internal::BeginFrame(xfer, secret, n_layers, deadline));
  }
  poller_.Wake();
  return t;
}

absl::Status TcpKvSender::Core::SendLayer(Transfer* t, int32_t layer,
                                          absl::Span<const ConstBlockView> blocks) {
  if (blocks.empty() || blocks.size() > options_.limits.max_blocks_per_layer) {
    return absl::InvalidArgumentError(
        absl::StrCat(XferName(t->xfer), ": layer ", layer, " with ", blocks.size(), " blocks"));
  }
  size_t bytes = 0;
  for (const ConstBlockView& b : blocks) {
    if (b.data == nullptr && b.bytes > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(XferName(t->xfer), ": layer ", layer, " has a null block view"));
    }
    bytes += b.bytes;
  }
  if (bytes > options_.limits.max_layer_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(XferName(t->xfer), ": layer ", layer, " of ", bytes, " bytes is too large"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (t->done) {
      return t->status.ok() ? absl::FailedPreconditionError(XferName(t->xfer) + " already done")
                            : t->status;
    }
    if (t->finished)
      return absl::FailedPreconditionError(XferName(t->xfer) + ": layer after Finish");
    if (layer < 0 || layer >= t->n_layers) {
      return absl::InvalidArgumentError(absl::StrCat(XferName(t->xfer), ": layer ", layer,
                                                     " out of range [0, ", t->n_layers, ")"));
    }
    if (t->given[layer]) {
      return absl::InvalidArgumentError(
          absl::StrCat(XferName(t->xfer), ": layer ", layer, " sent twice"));
    }
    t->layers[layer].assign(blocks.begin(), blocks.end());
    t->given[layer] = true;
    ++t->n_given;
    if (!t->ready) return absl::OkStatus();  // goes out with the receiver's Ready
    Conn* conn = FindConnLocked(t->conn_id);
    PDS_CHECK(conn != nullptr) << XferName(t->xfer);
    EnqueueLayerLocked(conn, t, layer);
  }
  poller_.Wake();
  return absl::OkStatus();
}

absl::Status TcpKvSender::Core::Finish(Transfer* t, std::string trailer) {
  if (trailer.size() > options_.max_trailer_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(XferName(t->xfer), ": trailer of ", trailer.size(), " bytes is too large"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (t->done) {
      return t->status.ok() ? absl::FailedPreconditionError(XferName(t->xfer) + " already done")
                            : t->status;
    }
    if (t->finished) return absl::FailedPreconditionError(XferName(t->xfer) + ": Finish twice");
    if (t->n_given != t->n_layers) {
      return absl::FailedPreconditionError(absl::StrCat(
          XferName(t->xfer), ": Finish after ", t->n_given, " of ", t->n_layers, " layers"));
    }
    t->finished = true;
    t->trailer = std::move(trailer);
    if (!t->ready) return absl::OkStatus();
    Conn* conn = FindConnLocked(t->conn_id);
    PDS_CHECK(conn != nullptr) << XferName(t->xfer);
    EnqueueTrailerLocked(conn, t);
  }
  poller_.Wake();
  return absl::OkStatus();
}

absl::Status TcpKvSender::Core::Wait(Transfer* t) {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&t->done));
  return t->status;
}

std::optional<absl::Status> TcpKvSender::Core::Poll(Transfer* t) {
  absl::MutexLock lock(&mu_);
  if (!t->done) return std::nullopt;
  return t->status;
}

void TcpKvSender::Core::Abort(Transfer* t) {
  Deferred deferred;
  {
    absl::MutexLock lock(&mu_);
    while (!t->done) {
      Conn* conn = FindConnLocked(t->conn_id);
      if (conn != nullptr && conn->writing) {
        // The loop may be reading t's views right now; they must stay valid
        // until it is out of sendmsg.
        write_done_.Wait(&mu_);
        continue;
      }
      CompleteLocked(t, absl::CancelledError(XferName(t->xfer) + " aborted by the sender"),
                     /*notify_peer=*/true, &deferred);
    }
  }
  poller_.Wake();
  RunDeferred(deferred);
}

void TcpKvSender::Core::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  poller_.Wake();
  if (loop_.joinable()) loop_.join();
  Deferred deferred;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, conn] : by_id_) {
      std::vector<std::shared_ptr<Transfer>> ts;
      for (auto& [xfer, t] : conn->transfers) ts.push_back(t);
      for (auto& t : ts) {
        CompleteLocked(t.get(), absl::CancelledError("sender shut down"), /*notify_peer=*/false,
                       &deferred);
      }
      conn->queue.Clear();
      poller_.Remove(conn->fd.get());
    }
    by_id_.clear();
    by_endpoint_.clear();
  }
  RunDeferred(deferred);
}

// ---------------------------------------------------------------------------
// Queue and completion.

Conn* TcpKvSender::Core::FindConnLocked(uint64_t id) {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second.get();
}

void TcpKvSender::Core::EnqueueLocked(Conn* conn, Transfer* t, std::unique_ptr<OutFrame> f) {
  ++t->queued_frames;
  conn->queue.Push(std::move(f));
}

void TcpKvSender::Core::EnqueueLayerLocked(Conn* conn, Transfer* t, int32_t layer) {
  EnqueueLocked(conn, t, internal::LayerFrame(t->xfer, layer, t->layers[layer]));
}

void TcpKvSender::Core::EnqueueTrailerLocked(Conn* conn, Transfer* t) {
  EnqueueLocked(conn, t, internal::TrailerFrame(t->xfer, t->secret, t->trailer));
}

void TcpKvSender::Core::CompleteLocked(Transfer* t, absl::Status status, bool notify_peer,
                                       Deferred* deferred) {
  if (t->done) return;
  t->done = true;
  t->status = status;
  Conn* conn = FindConnLocked(t->conn_id);
  if (conn != nullptr) {
    PDS_CHECK(!conn->writing) << XferName(t->xfer);
    if (!status.ok()) {
      // The Begin stays when the receiver is told, so the Abort means something.
      t->queued_frames -= conn->queue.Drop(t->xfer, /*keep_begin=*/notify_peer);
      if (notify_peer) conn->queue.Push(internal::AbortFrame(t->xfer, status.code()));
    }
    conn->transfers.erase(t->xfer);
  }
  t->layers.clear();
  counters_.Finished(status, MonoNowNs() - t->start_ns);
  deferred->emplace_back(std::move(t->on_done), std::move(status));
}

void TcpKvSender::Core::SetWantOutLocked(Conn* conn, bool want) {
  if (conn->want_out == want) return;
  conn->want_out = want;
  absl::Status st =
      poller_.Modify(conn->fd.get(), EPOLLIN | (want ? uint32_t{EPOLLOUT} : 0u), conn->id);
  if (!st.ok()) {
    PDS_LOG(ERROR) << "kv sender: " << st;
  }
}

// ---------------------------------------------------------------------------
// The event loop.

absl::Status TcpKvSender::Core::Flush(Conn* conn) {
  std::vector<OutFrame*> batch;
  std::vector<iovec> iov;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (conn->queue.empty()) {
        SetWantOutLocked(conn, false);
        return absl::OkStatus();
      }
      batch = conn->queue.NextBatch(kMaxBatchFrames, kMaxIov);
      conn->writing = true;  // Abort waits: the batch's views are in use
    }

    // Outside the lock: checksums and the syscall may take a while, and the
    // compute thread keeps appending frames meanwhile.
    Deadline now = MonoClock::now();
    for (OutFrame* f : batch) {
      if (!f->encoded) f->Encode(options_.checksum, now);
    }
    iov.clear();
    size_t want = internal::SendQueue::Gather(batch, kMaxIov, &iov);
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = iov.size();
    ssize_t n = ::sendmsg(conn->fd.get(), &msg, MSG_NOSIGNAL);
    int err = errno;

    absl::MutexLock lock(&mu_);
    conn->writing = false;
    write_done_.SignalAll();
    if (n < 0) {
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        SetWantOutLocked(conn, true);
        return absl::OkStatus();
      }
      return internal::ErrnoStatus(absl::StrCat("send to ", conn->endpoint), err);
    }
    conn->queue.Advance(static_cast<size_t>(n), [&](const OutFrame& f) {
      if (f.header.type == FrameType::kLayer && !f.rest_owned) counters_.AddBytes(f.data_bytes);
      auto t = conn->transfers.find(f.xfer());
      if (t != conn->transfers.end()) --t->second->queued_frames;
    });
    if (static_cast<size_t>(n) < want) {
      SetWantOutLocked(conn, true);  // the socket buffer is full
      return absl::OkStatus();
    }
  }
}

absl::Status TcpKvSender::Core::HandleReadable(Conn* conn) {
  // Bounded so one chatty peer cannot starve the others.
  for (int round = 0; round < 64; ++round) {
    absl::StatusOr<std::optional<internal::SmallFrame>> f =
        conn->reader.Next(conn->fd.get(), options_.limits);
    if (!f.ok()) {
      return absl::Status(f.status().code(),
                          absl::StrCat("receiver ", conn->endpoint, ": ", f.status().message()));
    }
    if (!f->has_value()) return absl::OkStatus();
    const FrameHeader& h = (*f)->header;
    if (h.type != FrameType::kReady && h.type != FrameType::kAck && h.type != FrameType::kNack) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected ", internal::FrameTypeName(h.type),
                                                     " frame from receiver ", conn->endpoint));
    }
    Deferred deferred;
    HandleFrame(conn, h, std::move((*f)->payload), &deferred);
    RunDeferred(deferred);
  }
  return absl::OkStatus();
}

void TcpKvSender::Core::HandleFrame(Conn* conn, const FrameHeader& h, std::string payload,
                                    Deferred* deferred) {
  absl::MutexLock lock(&mu_);
  auto it = conn->transfers.find(TransferId{h.xfer_id});
  if (it == conn->transfers.end()) return;  // finished here already (deadline, abort)
  Transfer* t = it->second.get();
  switch (h.type) {
    case FrameType::kReady:
      if (t->ready) return;
      t->ready = true;
      for (int32_t layer = 0; layer < t->n_layers; ++layer) {
        if (t->given[layer]) EnqueueLayerLocked(conn, t, layer);
      }
      if (t->finished) EnqueueTrailerLocked(conn, t);
      return;
    case FrameType::kAck:
      if (!t->finished || t->queued_frames > 0) {
        // An Ack for data we have not sent would let the caller free blocks
        // we still read: treat it as a broken peer, never as success.
        CompleteLocked(
            t,
            absl::InternalError(absl::StrCat("receiver ", conn->endpoint, " acknowledged ",
                                             XferName(t->xfer), " before it was sent")),
            /*notify_peer=*/true, deferred);
        return;
      }
      CompleteLocked(t, absl::OkStatus(), /*notify_peer=*/false, deferred);
      return;
    case FrameType::kNack:
      CompleteLocked(t,
                     absl::Status(static_cast<absl::StatusCode>(h.arg0),
                                  absl::StrCat("receiver ", conn->endpoint, ": ", payload)),
                     /*notify_peer=*/true, deferred);
      return;
    default:
      return;
  }
}

void TcpKvSender::Core::FailConn(const std::shared_ptr<Conn>& conn, const absl::Status& why) {
  Deferred deferred;
  {
    absl::MutexLock lock(&mu_);
    if (!conn->transfers.empty()) {
      PDS_LOG(WARNING) << "kv sender: dropping connection to " << conn->endpoint << " with "
                       << conn->transfers.size() << " transfers in flight: " << why;
    }
    std::vector<std::shared_ptr<Transfer>> ts;
    for (auto& [xfer, t] : conn->transfers) ts.push_back(t);
    for (auto& t : ts) {
      absl::Status failed = absl::UnavailableError(
          absl::StrCat(XferName(t->xfer), " to ", conn->endpoint, ": ", why.message()));
      CompleteLocked(t.get(), failed, /*notify_peer=*/false, &deferred);
    }
    conn->queue.Clear();
    poller_.Remove(conn->fd.get());
    conn->fd.Reset();
    auto it = by_endpoint_.find(conn->endpoint);
    if (it != by_endpoint_.end() && it->second == conn) by_endpoint_.erase(it);
    by_id_.erase(conn->id);
  }
  RunDeferred(deferred);
}

Deadline TcpKvSender::Core::ExpireDue(Deadline now) {
  Deferred deferred;
  Deadline next = Deadline::max();
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, conn] : by_id_) {
      std::vector<std::shared_ptr<Transfer>> expired;
      for (auto& [xfer, t] : conn->transfers) {
        if (t->deadline <= now) {
          expired.push_back(t);
        } else {
          next = std::min(next, t->deadline);
        }
      }
      for (auto& t : expired) {
        CompleteLocked(
            t.get(),
            absl::DeadlineExceededError(absl::StrCat(
                XferName(t->xfer), " to ", t->peer, ": deadline passed ",
                t->ready ? "before the receiver acknowledged" : "before the receiver posted blocks",
                " (", t->n_given, " of ", t->n_layers, " layers given)")),
            /*notify_peer=*/true, &deferred);
      }
    }
  }
  RunDeferred(deferred);
  return next;
}

void TcpKvSender::Core::Loop() {
  std::array<epoll_event, 64> events;
  int timeout_ms = 0;
  while (true) {
    int n = poller_.Wait(events.data(), events.size(), timeout_ms);
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    for (int i = 0; i < n; ++i) {
      std::shared_ptr<Conn> conn;
      {
        // epoll_event is packed on x86-64: find() takes a reference, which
        // must not bind to the misaligned data.u64 (UBSan); copy it out.
        const uint64_t token = events[i].data.u64;
        absl::MutexLock lock(&mu_);
        auto it = by_id_.find(token);
        if (it == by_id_.end()) continue;  // closed earlier in this batch
        conn = it->second;
      }
      uint32_t ev = events[i].events;
      absl::Status st;
      if (conn->connecting) {
        if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) continue;
        st = internal::SocketError(conn->fd.get(), absl::StrCat("connect to ", conn->endpoint));
        if (st.ok()) {
          conn->connecting = false;
          internal::TuneSocket(conn->fd.get(), options_.socket_buffer_bytes);
        }
      }
      if (st.ok() && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) st = HandleReadable(conn.get());
      if (st.ok() && (ev & EPOLLOUT)) st = Flush(conn.get());
      if (!st.ok()) FailConn(conn, st);
    }
    // Frames appended by callers (or by replies above) on idle connections.
    std::vector<std::shared_ptr<Conn>> pending;
    {
      absl::MutexLock lock(&mu_);
      for (auto& [id, conn] : by_id_) {
        if (!conn->connecting && !conn->want_out && !conn->queue.empty()) pending.push_back(conn);
      }
    }
    for (auto& conn : pending) {
      absl::Status st = Flush(conn.get());
      if (!st.ok()) FailConn(conn, st);
    }
    Deadline next = ExpireDue(MonoClock::now());
    {
      // Aborts from expiry may have queued frames: go round again at once.
      absl::MutexLock lock(&mu_);
      bool more = false;
      for (auto& [id, conn] : by_id_) {
        if (!conn->connecting && !conn->want_out && !conn->queue.empty()) more = true;
      }
      if (more) {
        timeout_ms = 0;
        continue;
      }
    }
    if (next == Deadline::max()) {
      timeout_ms = -1;
    } else {
      auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - MonoClock::now());
      timeout_ms = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 60'000));
    }
  }
}

}  // namespace pdserve::transport
