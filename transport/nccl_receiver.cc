#include "transport/nccl_receiver.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "transport/nccl_device.h"
#include "transport/nccl_wire.h"
#include "transport/tcp_socket.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {

using internal::LayerVerdict;
using internal::LinkId;
using internal::NcclFrame;
using internal::NcclFrameType;
using internal::ReplyKind;

namespace internal {

// Work for a link thread, in control-frame order.
struct NcclRecvWork {
  enum Kind { kLayer, kTrailer, kAbort } kind = kLayer;
  TransferId xfer;
  int32_t layer = 0;
  uint64_t bytes = 0;
  LayerVerdict verdict = LayerVerdict::kDiscard;
  std::string trailer;
  AuthTag tag{};  // the trailer's
};

// One sender connection: a reader thread for its control frames and a
// worker thread for its NCCL receives.
struct NcclRecvLink {
  LinkId id = 0;
  std::string peer;
  internal::UniqueFd fd;
  internal::NcclDevice dev;
  std::mutex write_mu;  // frames to the sender
  std::mutex mu;
  std::condition_variable cv;
  std::deque<NcclRecvWork> work;  // guarded by mu
  std::string hello;              // guarded by mu: the sender's ncclUniqueId
  bool closing = false;           // guarded by mu
  std::atomic<bool> dead{false};
  std::thread reader, worker;
};

}  // namespace internal

using internal::NcclRecvLink;
using internal::NcclRecvWork;

class NcclKvReceiver::Impl final : public internal::ReplySink {
 public:
  explicit Impl(NcclReceiverOptions options)
      : options_(std::move(options)), table_(this, options_.table, &counters_) {}

  absl::Status Start() {
    absl::StatusOr<internal::UniqueFd> fd =
        internal::ListenTcp(options_.listen_host, options_.port, 64);
    if (!fd.ok()) return fd.status();
    absl::StatusOr<uint16_t> port = internal::LocalPort(fd->get());
    if (!port.ok()) return port.status();
    listen_ = std::move(*fd);
    const std::string host =
        options_.advertise_host.empty() ? options_.listen_host : options_.advertise_host;
    endpoint_ = absl::StrCat(internal::kNcclScheme, internal::FormatHostPort(host, *port));
    acceptor_ = std::thread([this] { AcceptLoop(); });
    timer_ = std::thread([this] { TimerLoop(); });
    return absl::OkStatus();
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    timer_cv_.notify_all();
    if (acceptor_.joinable()) acceptor_.join();
    if (timer_.joinable()) timer_.join();
    table_.Shutdown(absl::CancelledError("NCCL receiver shut down"));
    std::vector<std::shared_ptr<NcclRecvLink>> links;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, l] : links_) links.push_back(l);
      links.insert(links.end(), dead_.begin(), dead_.end());
      links_.clear();
      dead_.clear();
    }
    for (auto& l : links) Kill(l, absl::UnavailableError("NCCL receiver shut down"));
    for (auto& l : links) Join(l);
  }

  const std::string& endpoint() const { return endpoint_; }
  internal::ReceiveTable& table() { return table_; }
  KvTransportStats stats() const { return counters_.Snapshot(); }

  // ReplySink: Ready/Ack/Nack frames to the sender.
  void Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) override {
    std::shared_ptr<NcclRecvLink> l = FindLink(link);
    if (!l) return;
    NcclFrame f;
    f.xfer = xfer.value;
    f.type = kind == ReplyKind::kReady ? NcclFrameType::kReady
             : kind == ReplyKind::kAck ? NcclFrameType::kAck
                                       : NcclFrameType::kNack;
    if (kind == ReplyKind::kNack) {
      f.arg0 = static_cast<int64_t>(status.code());
      f.payload = std::string(status.message());
    }
    absl::Status s;
    {
      std::lock_guard<std::mutex> lock(l->write_mu);
      s = internal::WriteNcclFrame(l->fd.get(), f);
    }
    if (!s.ok()) Kill(l, s);
  }
  void WakeForDeadline() override { timer_cv_.notify_all(); }

 private:
  std::shared_ptr<NcclRecvLink> FindLink(LinkId id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(id);
    return it == links_.end() ? nullptr : it->second;
  }

  void AcceptLoop() {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      pollfd p{listen_.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int fd = ::accept(listen_.get(), nullptr, nullptr);
      if (fd < 0) continue;
      auto l = std::make_shared<NcclRecvLink>();
      l->fd = internal::UniqueFd(fd);
      internal::TuneSocket(fd, 0);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
        // (Closed links waiting to be joined do not count: their threads
        // are on their way out.)
        if (static_cast<int>(links_.size()) >= options_.max_connections) {
          counters_.ConnectionRefused();
          PDS_LOG(WARNING) << "NCCL receiver " << endpoint_ << ": refusing a connection, already "
                           << links_.size();
          continue;  // l's fd closes
        }
        l->id = next_link_++;
        l->peer = absl::StrCat("sender link ", l->id);
        links_[l->id] = l;
      }
      // The accepted socket may inherit O_NONBLOCK from the listener.
      int flags = fcntl(fd, F_GETFL, 0);
      fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
      internal::StartLinkThreads(
          l, [this](const std::shared_ptr<NcclRecvLink>& link) { ReadLoop(link); },
          [this](const std::shared_ptr<NcclRecvLink>& link) { WorkLoop(link); });
    }
  }

  // The largest control frame a sender may send: a Layer's size table or a
  // trailer with its tag.
  uint32_t MaxPayload() const {
    return static_cast<uint32_t>(
        std::min<uint64_t>(internal::kNcclMaxPayload,
                           std::max<uint64_t>(uint64_t{options_.limits.max_blocks_per_layer} * 8,
                                              options_.limits.max_trailer_bytes + kAuthTagBytes)));
  }

  void ReadLoop(const std::shared_ptr<NcclRecvLink>& l) {
    NcclFrame hello;
    absl::Status s = internal::ReadNcclFrame(l->fd.get(), &hello, sizeof(ncclUniqueId));
    if (s.ok() &&
        (hello.type != NcclFrameType::kHello || hello.payload.size() != sizeof(ncclUniqueId))) {
      s = absl::InvalidArgumentError("NCCL control connection did not start with Hello");
    }
    if (!s.ok()) return Kill(l, s);
    {
      std::lock_guard<std::mutex> lock(l->mu);
      l->hello = std::move(hello.payload);
    }
    l->cv.notify_all();
    for (;;) {
      NcclFrame f;
      s = internal::ReadNcclFrame(l->fd.get(), &f, MaxPayload());
      if (!s.ok()) {
        if (absl::IsInvalidArgument(s)) counters_.ProtocolError();
        return Kill(l, absl::UnavailableError(absl::StrCat(l->peer, ": ", s.message())));
      }
      const TransferId xfer{f.xfer};
      auto bad = [&](auto... what) {
        counters_.ProtocolError();
        Kill(l, absl::InvalidArgumentError(absl::StrCat(what...)));
      };
      switch (f.type) {
        case NcclFrameType::kBegin: {
          if (f.arg0 < 1 || f.arg0 > options_.limits.max_layers || f.arg1 < 0 ||
              f.arg1 > std::numeric_limits<uint32_t>::max() || f.payload.size() != kAuthTagBytes) {
            return bad("bad Begin frame for transfer ", f.xfer, " (n_layers ", f.arg0, ", budget ",
                       f.arg1, " ms, ", f.payload.size(), " payload bytes)");
          }
          BeginProof proof;
          proof.budget_ms = static_cast<uint32_t>(f.arg1);
          std::memcpy(proof.tag.data(), f.payload.data(), kAuthTagBytes);
          table_.Announce(l->id, xfer, static_cast<int32_t>(f.arg0),
                          MonoClock::now() + std::chrono::milliseconds(f.arg1), proof);
          break;
        }
        case NcclFrameType::kLayer: {
          const size_t n_blocks = f.payload.size() / 8;
          if (f.payload.size() % 8 != 0 || n_blocks == 0 ||
              n_blocks > options_.limits.max_blocks_per_layer || f.arg0 < 0 ||
              f.arg0 >= options_.limits.max_layers) {
            return bad("bad Layer frame for transfer ", f.xfer);
          }
          std::vector<uint64_t> sizes(n_blocks);
          std::memcpy(sizes.data(), f.payload.data(), f.payload.size());
          uint64_t total = 0;
          for (uint64_t b : sizes) {
            if (b > options_.limits.max_layer_bytes - total) {
              return bad("Layer frame for transfer ", f.xfer, " over ",
                         options_.limits.max_layer_bytes, " bytes");
            }
            total += b;
          }
          std::string error;
          const LayerVerdict v =
              table_.BeginLayer(l->id, xfer, static_cast<int32_t>(f.arg0), sizes, &error);
          if (v == LayerVerdict::kProtocolError) return bad(error);
          Push(l, {NcclRecvWork::kLayer, xfer, static_cast<int32_t>(f.arg0), total, v, {}, {}});
          break;
        }
        case NcclFrameType::kTrailer: {
          if (f.payload.size() < kAuthTagBytes) return bad("Trailer frame without its tag");
          NcclRecvWork w{NcclRecvWork::kTrailer, xfer, 0, 0, LayerVerdict::kDiscard, {}, {}};
          std::memcpy(w.tag.data(), f.payload.data() + f.payload.size() - kAuthTagBytes,
                      kAuthTagBytes);
          f.payload.resize(f.payload.size() - kAuthTagBytes);
          w.trailer = std::move(f.payload);
          Push(l, std::move(w));
          break;
        }
        case NcclFrameType::kAbort:
          // arg0: the sender's reason (a status code), carried in `layer`.
          Push(l, {NcclRecvWork::kAbort,
                   xfer,
                   f.arg0 > 0 && f.arg0 <= 16 ? static_cast<int32_t>(f.arg0) : 0,
                   0,
                   LayerVerdict::kDiscard,
                   {},
                   {}});
          break;
        default:
          return bad("unexpected NCCL control frame from a sender");
      }
    }
  }

  void Push(const std::shared_ptr<NcclRecvLink>& l, NcclRecvWork w) {
    {
      std::lock_guard<std::mutex> lock(l->mu);
      l->work.push_back(std::move(w));
    }
    l->cv.notify_all();
  }

  void WorkLoop(const std::shared_ptr<NcclRecvLink>& l) {
    absl::Status s = l->dev.Init(options_.device);
    ncclUniqueId id;
    // Join the sender's communicator only once it proved a secret: an
    // anonymous peer gets no NCCL resources, and no slot for long.
    const Deadline verify_by =
        MonoClock::now() + std::chrono::milliseconds(options_.verify_timeout_ms);
    for (;;) {
      bool have_hello;
      {
        std::unique_lock<std::mutex> lock(l->mu);
        l->cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return l->closing; });
        if (l->closing) return;
        have_hello = !l->hello.empty();
        if (have_hello) std::memcpy(&id, l->hello.data(), sizeof(id));
      }
      if (have_hello && table_.LinkVerified(l->id)) break;
      if (MonoClock::now() >= verify_by) {
        counters_.ConnectionTimedOut();
        return Kill(l, absl::DeadlineExceededError(
                           absl::StrCat("no Begin proved its transfer's secret within ",
                                        options_.verify_timeout_ms, " ms of connecting")));
      }
    }
    if (s.ok()) {
      s = l->dev.InitComm(
          id, 1, MonoClock::now() + std::chrono::milliseconds(options_.comm_init_timeout_ms));
    }
    if (!s.ok()) return Kill(l, s);
    for (;;) {
      NcclRecvWork w;
      {
        std::unique_lock<std::mutex> lock(l->mu);
        l->cv.wait(lock, [&] { return l->closing || !l->work.empty(); });
        if (l->closing) return;
        w = std::move(l->work.front());
        l->work.pop_front();
      }
      switch (w.kind) {
        case NcclRecvWork::kLayer:
          s = ReceiveLayer(l, w);
          if (!s.ok()) return Kill(l, s);
          break;
        case NcclRecvWork::kTrailer:
          if (!table_.Trailer(l->id, w.xfer, std::move(w.trailer), w.tag, absl::OkStatus())) {
            return Kill(l,
                        absl::InvalidArgumentError("Trailer for a transfer not open on the link"));
          }
          break;
        case NcclRecvWork::kAbort:
          table_.SenderAborted(l->id, w.xfer, static_cast<absl::StatusCode>(w.layer));
          break;
      }
    }
  }

  // The layer's bytes into staging; then, under a write lease, into the
  // posted blocks. The lease is only held for the unpack copy, never while
  // waiting on the network.
  absl::Status ReceiveLayer(const std::shared_ptr<NcclRecvLink>& l, const NcclRecvWork& w) {
    if (absl::Status s = l->dev.Recv(w.bytes, 0); !s.ok()) return s;
    if (absl::Status s = l->dev.Sync(); !s.ok()) return s;
    if (w.verdict != LayerVerdict::kWrite) return absl::OkStatus();
    const std::vector<BlockView>* views = table_.AcquireWrite(w.xfer, w.layer);
    if (views == nullptr) return absl::OkStatus();  // ended meanwhile: dropped
    absl::Status s = l->dev.Unpack(*views);
    if (s.ok()) s = l->dev.Sync();
    table_.ReleaseWrite(w.xfer);
    if (!s.ok()) return s;
    table_.EndLayer(l->id, w.xfer, w.layer, absl::OkStatus());
    return absl::OkStatus();
  }

  // Fails the link once: aborts its communicator (unblocking its worker),
  // closes the socket (unblocking its reader), fails its transfers.
  void Kill(const std::shared_ptr<NcclRecvLink>& l, const absl::Status& why) {
    if (l->dead.exchange(true)) return;
    PDS_LOG(INFO) << "NCCL receiver: " << l->peer << " closed: " << why;
    l->dev.Abort();
    ::shutdown(l->fd.get(), SHUT_RDWR);
    {
      std::lock_guard<std::mutex> lock(l->mu);
      l->closing = true;
    }
    l->cv.notify_all();
    table_.LinkClosed(l->id, absl::UnavailableError(absl::StrCat(l->peer, ": ", why.message())));
    std::lock_guard<std::mutex> lock(mu_);
    if (links_.erase(l->id) > 0) dead_.push_back(l);
    timer_cv_.notify_all();
  }

  static void Join(const std::shared_ptr<NcclRecvLink>& l) {
    if (l->reader.joinable()) l->reader.join();
    if (l->worker.joinable()) l->worker.join();
  }

  // Deadlines, and joining the threads of dead links.
  void TimerLoop() {
    for (;;) {
      std::vector<std::shared_ptr<NcclRecvLink>> reap;
      Deadline next;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (stopping_) return;
        reap.swap(dead_);
      }
      for (auto& l : reap) Join(l);
      next = table_.ExpireDue(MonoClock::now());
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) return;
      const auto wait = std::min<Deadline>(next, MonoClock::now() + std::chrono::milliseconds(100));
      timer_cv_.wait_until(lock, wait, [&] { return stopping_ || !dead_.empty(); });
    }
  }

  const NcclReceiverOptions options_;
  internal::TransferCounters counters_;
  internal::ReceiveTable table_;
  internal::UniqueFd listen_;
  std::string endpoint_;
  std::thread acceptor_, timer_;
  std::mutex mu_;
  std::condition_variable timer_cv_;
  bool stopping_ = false;
  LinkId next_link_ = 1;
  absl::flat_hash_map<LinkId, std::shared_ptr<NcclRecvLink>> links_;
  std::vector<std::shared_ptr<NcclRecvLink>> dead_;
};

absl::StatusOr<std::unique_ptr<NcclKvReceiver>> NcclKvReceiver::Create(
    NcclReceiverOptions options) {
  auto impl = std::make_shared<Impl>(std::move(options));
  if (absl::Status s = impl->Start(); !s.ok()) return s;
  return std::unique_ptr<NcclKvReceiver>(new NcclKvReceiver(std::move(impl)));
}

NcclKvReceiver::NcclKvReceiver(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclKvReceiver::~NcclKvReceiver() { impl_->Stop(); }
std::string NcclKvReceiver::endpoint() const { return impl_->endpoint(); }
absl::Status NcclKvReceiver::Post(TransferId xfer_id, const TransferSecret& secret,
                                  std::vector<std::vector<BlockView>> layers, Deadline deadline,
                                  ReceiveDoneCallback on_done) {
  return impl_->table().Post(xfer_id, secret, std::move(layers), deadline, std::move(on_done));
}
absl::Status NcclKvReceiver::Cancel(TransferId xfer_id) { return impl_->table().Cancel(xfer_id); }
KvTransportStats NcclKvReceiver::stats() const { return impl_->stats(); }

}  // namespace pdserve::transport
