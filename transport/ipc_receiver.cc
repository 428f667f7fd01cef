#include "transport/ipc_receiver.h"

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
#include "kernels/cuda/cuda_compat.h"
#include "transport/ipc_sender.h"
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

absl::Status IpcRecvCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

struct SourceBlock {
  uint32_t region = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

// Work for a link's worker, in control-frame order.
struct IpcRecvWork {
  enum Kind { kHandle, kLayer, kTrailer, kAbort } kind = kLayer;
  TransferId xfer;
  int32_t layer = 0;  // kHandle: the region (-1: the event); kAbort: the sender's code
  LayerVerdict verdict = LayerVerdict::kDiscard;
  std::vector<SourceBlock> blocks;
  std::string payload;  // kHandle: the handle; kTrailer: the trailer
  AuthTag tag{};        // the trailer's
};

struct IpcRecvLink {
  LinkId id = 0;
  std::string peer;
  internal::UniqueFd fd;
  std::mutex write_mu;  // frames to the sender
  std::mutex mu;
  std::condition_variable cv;
  std::deque<IpcRecvWork> work;  // guarded by mu
  bool closing = false;          // guarded by mu
  std::atomic<bool> dead{false};
  std::thread reader, worker;
  // Reader thread only: what the sender announced.
  std::vector<uint64_t> region_bytes;
  bool have_event = false;
  // Set by the reader before it queues any work: the Hello carried this
  // process's nonce, so the sender's pointers are ours to use as they are.
  bool same_process = false;
  // Worker thread only: the sender's memory and event, opened (or, within
  // one process, borrowed: then never closed here).
  std::vector<char*> region_base;
  bool borrowed = false;
  cudaEvent_t event = nullptr;
  cudaStream_t stream = nullptr;
};

}  // namespace internal

using internal::IpcRecvCuda;
using internal::IpcRecvLink;
using internal::IpcRecvWork;
using internal::SourceBlock;

class IpcKvReceiver::Impl final : public internal::ReplySink {
 public:
  explicit Impl(IpcReceiverOptions options)
      : options_(std::move(options)),
        host_id_(internal::HostIdentity()),
        table_(this, options_.table, &counters_) {}

  absl::Status Start() {
    absl::StatusOr<internal::UniqueFd> fd =
        internal::ListenTcp(options_.listen_host, options_.port, 64);
    if (!fd.ok()) return fd.status();
    absl::StatusOr<uint16_t> port = internal::LocalPort(fd->get());
    if (!port.ok()) return port.status();
    listen_ = std::move(*fd);
    const std::string host =
        options_.advertise_host.empty() ? options_.listen_host : options_.advertise_host;
    endpoint_ = absl::StrCat(kIpcScheme, internal::FormatHostPort(host, *port));
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
    table_.Shutdown(absl::CancelledError("IPC receiver shut down"));
    std::vector<std::shared_ptr<IpcRecvLink>> links;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, l] : links_) links.push_back(l);
      links.insert(links.end(), dead_.begin(), dead_.end());
      links_.clear();
      dead_.clear();
    }
    for (auto& l : links) Kill(l, absl::UnavailableError("IPC receiver shut down"));
    for (auto& l : links) Join(l);
  }

  const std::string& endpoint() const { return endpoint_; }
  internal::ReceiveTable& table() { return table_; }
  KvTransportStats stats() const { return counters_.Snapshot(); }

  void Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) override {
    std::shared_ptr<IpcRecvLink> l = FindLink(link);
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
    if (absl::Status s = Write(l, f); !s.ok()) Kill(l, s);
  }
  void WakeForDeadline() override { timer_cv_.notify_all(); }

 private:
  std::shared_ptr<IpcRecvLink> FindLink(LinkId id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(id);
    return it == links_.end() ? nullptr : it->second;
  }

  static absl::Status Write(const std::shared_ptr<IpcRecvLink>& l, const NcclFrame& f) {
    std::lock_guard<std::mutex> lock(l->write_mu);
    return internal::WriteNcclFrame(l->fd.get(), f);
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
      auto l = std::make_shared<IpcRecvLink>();
      l->fd = internal::UniqueFd(fd);
      internal::TuneSocket(fd, 0);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
        if (static_cast<int>(links_.size()) >= options_.max_connections) {
          counters_.ConnectionRefused();
          PDS_LOG(WARNING) << "IPC receiver " << endpoint_ << ": refusing a connection, already "
                           << links_.size();
          continue;  // l's fd closes
        }
        l->id = next_link_++;
        l->peer = absl::StrCat("IPC sender link ", l->id);
        links_[l->id] = l;
      }
      const int flags = fcntl(fd, F_GETFL, 0);
      fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
      internal::StartLinkThreads(
          l, [this](const std::shared_ptr<IpcRecvLink>& link) { ReadLoop(link); },
          [this](const std::shared_ptr<IpcRecvLink>& link) { WorkLoop(link); });
    }
  }

  uint32_t MaxPayload() const {
    return static_cast<uint32_t>(std::min<uint64_t>(
        internal::kNcclMaxPayload,
        std::max<uint64_t>(
            uint64_t{options_.limits.max_blocks_per_layer} * internal::kIpcBlockEntryBytes,
            options_.limits.max_trailer_bytes + kAuthTagBytes)));
  }

  void ReadLoop(const std::shared_ptr<IpcRecvLink>& l) {
    NcclFrame hello;
    absl::Status s = internal::ReadNcclFrame(l->fd.get(), &hello, 512);
    if (s.ok() &&
        (hello.type != NcclFrameType::kHello || hello.payload.size() <= internal::kIpcNonceBytes)) {
      s = absl::InvalidArgumentError("IPC control connection did not start with Hello");
    }
    if (s.ok()) {
      l->same_process =
          hello.payload.compare(0, internal::kIpcNonceBytes, internal::ProcessNonce()) == 0;
    }
    if (s.ok() && hello.payload.substr(internal::kIpcNonceBytes) != host_id_) {
      // CUDA IPC handles only open on the host that made them.
      s = absl::FailedPreconditionError(
          "the IPC sender runs on another host; use --kv-transport nccl or tcp between hosts");
      NcclFrame nack;
      nack.type = NcclFrameType::kNack;
      nack.arg0 = static_cast<int64_t>(s.code());
      nack.payload = std::string(s.message());
      Write(l, nack).IgnoreError();
    }
    if (!s.ok()) {
      if (absl::IsInvalidArgument(s)) counters_.ProtocolError();
      return Kill(l, s);
    }
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
            return bad("bad Begin frame for transfer ", f.xfer);
          }
          BeginProof proof;
          proof.budget_ms = static_cast<uint32_t>(f.arg1);
          std::memcpy(proof.tag.data(), f.payload.data(), kAuthTagBytes);
          table_.Announce(l->id, xfer, static_cast<int32_t>(f.arg0),
                          MonoClock::now() + std::chrono::milliseconds(f.arg1), proof);
          break;
        }
        case NcclFrameType::kHandle: {
          // Only a sender that proved a secret may make this node map memory.
          if (!table_.LinkVerified(l->id)) return bad("IPC handle before any verified Begin");
          if (f.payload.size() != internal::kIpcHandleFrameBytes) {
            return bad("bad IPC handle frame size");
          }
          if (f.arg0 == -1) {
            if (l->have_event) return bad("IPC event handle sent twice");
            l->have_event = true;
          } else {
            if (f.arg0 != static_cast<int64_t>(l->region_bytes.size()) ||
                f.arg0 >= internal::kIpcMaxRegions || f.arg1 <= 0 || f.arg1 > (int64_t{1} << 48)) {
              return bad("bad IPC region ", f.arg0, " of ", f.arg1, " bytes");
            }
            l->region_bytes.push_back(static_cast<uint64_t>(f.arg1));
          }
          IpcRecvWork w;
          w.kind = IpcRecvWork::kHandle;
          w.layer = static_cast<int32_t>(f.arg0);
          w.payload = std::move(f.payload);
          Push(l, std::move(w));
          break;
        }
        case NcclFrameType::kLayer: {
          const size_t n_blocks = f.payload.size() / internal::kIpcBlockEntryBytes;
          if (f.payload.size() % internal::kIpcBlockEntryBytes != 0 || n_blocks == 0 ||
              n_blocks > options_.limits.max_blocks_per_layer || f.arg0 < 0 ||
              f.arg0 >= options_.limits.max_layers) {
            return bad("bad Layer frame for transfer ", f.xfer);
          }
          if (!l->have_event) return bad("Layer frame before the IPC handles");
          IpcRecvWork w;
          w.kind = IpcRecvWork::kLayer;
          w.xfer = xfer;
          w.layer = static_cast<int32_t>(f.arg0);
          w.blocks.resize(n_blocks);
          std::vector<uint64_t> sizes(n_blocks);
          uint64_t total = 0;
          for (size_t i = 0; i < n_blocks; ++i) {
            const char* e = f.payload.data() + i * internal::kIpcBlockEntryBytes;
            SourceBlock& b = w.blocks[i];
            std::memcpy(&b.region, e, 4);
            std::memcpy(&b.offset, e + 8, 8);
            std::memcpy(&b.bytes, e + 16, 8);
            if (b.region >= l->region_bytes.size() || b.bytes > l->region_bytes[b.region] ||
                b.offset > l->region_bytes[b.region] - b.bytes) {
              return bad("Layer frame for transfer ", f.xfer, ": block ", i,
                         " lies outside IPC region ", b.region);
            }
            if (b.bytes > options_.limits.max_layer_bytes - total) {
              return bad("Layer frame for transfer ", f.xfer, " over ",
                         options_.limits.max_layer_bytes, " bytes");
            }
            total += b.bytes;
            sizes[i] = b.bytes;
          }
          std::string error;
          w.verdict = table_.BeginLayer(l->id, xfer, w.layer, sizes, &error);
          if (w.verdict == LayerVerdict::kProtocolError) return bad(error);
          Push(l, std::move(w));
          break;
        }
        case NcclFrameType::kTrailer: {
          if (f.payload.size() < kAuthTagBytes) return bad("Trailer frame without its tag");
          IpcRecvWork w;
          w.kind = IpcRecvWork::kTrailer;
          w.xfer = xfer;
          std::memcpy(w.tag.data(), f.payload.data() + f.payload.size() - kAuthTagBytes,
                      kAuthTagBytes);
          f.payload.resize(f.payload.size() - kAuthTagBytes);
          w.payload = std::move(f.payload);
          Push(l, std::move(w));
          break;
        }
        case NcclFrameType::kAbort: {
          IpcRecvWork w;
          w.kind = IpcRecvWork::kAbort;
          w.xfer = xfer;
          w.layer = f.arg0 > 0 && f.arg0 <= 16 ? static_cast<int32_t>(f.arg0) : 0;
          Push(l, std::move(w));
          break;
        }
        default:
          return bad("unexpected IPC control frame from a sender");
      }
    }
  }

  void Push(const std::shared_ptr<IpcRecvLink>& l, IpcRecvWork w) {
    {
      std::lock_guard<std::mutex> lock(l->mu);
      l->work.push_back(std::move(w));
    }
    l->cv.notify_all();
  }

  void WorkLoop(const std::shared_ptr<IpcRecvLink>& l) {
    absl::Status s = IpcRecvCuda(cudaSetDevice(options_.device), "cudaSetDevice");
    if (s.ok()) {
      s = IpcRecvCuda(cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking),
                      "cudaStreamCreate");
    }
    if (!s.ok()) return Kill(l, s);
    // A link that never proves a secret is closed after verify_timeout_ms.
    const Deadline verify_by =
        MonoClock::now() + std::chrono::milliseconds(options_.verify_timeout_ms);
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(l->mu);
        l->cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return l->closing; });
        if (l->closing) return;
      }
      if (table_.LinkVerified(l->id)) break;
      if (MonoClock::now() >= verify_by) {
        counters_.ConnectionTimedOut();
        return Kill(l, absl::DeadlineExceededError(
                           absl::StrCat("no Begin proved its transfer's secret within ",
                                        options_.verify_timeout_ms, " ms of connecting")));
      }
    }
    for (;;) {
      IpcRecvWork w;
      {
        std::unique_lock<std::mutex> lock(l->mu);
        l->cv.wait(lock, [&] { return l->closing || !l->work.empty(); });
        if (l->closing) return;
        w = std::move(l->work.front());
        l->work.pop_front();
      }
      switch (w.kind) {
        case IpcRecvWork::kHandle:
          s = OpenHandle(l, w);
          if (!s.ok()) return Kill(l, s);
          break;
        case IpcRecvWork::kLayer:
          s = CopyLayer(l, w);
          if (!s.ok()) return Kill(l, s);
          break;
        case IpcRecvWork::kTrailer:
          if (!table_.Trailer(l->id, w.xfer, std::move(w.payload), w.tag, absl::OkStatus())) {
            return Kill(l,
                        absl::InvalidArgumentError("Trailer for a transfer not open on the link"));
          }
          break;
        case IpcRecvWork::kAbort: {
          table_.SenderAborted(l->id, w.xfer, static_cast<absl::StatusCode>(w.layer));
          // Every earlier copy is done (this worker ran them in order): the
          // sender may reuse its blocks.
          NcclFrame f;
          f.type = NcclFrameType::kReleased;
          f.xfer = w.xfer.value;
          if (s = Write(l, f); !s.ok()) return Kill(l, s);
          break;
        }
      }
    }
  }

  absl::Status OpenHandle(const std::shared_ptr<IpcRecvLink>& l, const IpcRecvWork& w) {
    if (l->same_process) {
      // CUDA does not open a process's own handles: use its pointers.
      uint64_t p;
      std::memcpy(&p, w.payload.data() + sizeof(cudaIpcMemHandle_t), sizeof(p));
      l->borrowed = true;
      if (w.layer == -1) {
        l->event = reinterpret_cast<cudaEvent_t>(p);
      } else {
        l->region_base.push_back(reinterpret_cast<char*>(p));
      }
      return absl::OkStatus();
    }
    if (w.layer == -1) {
      cudaIpcEventHandle_t h;
      std::memcpy(&h, w.payload.data(), sizeof(h));
      return IpcRecvCuda(cudaIpcOpenEventHandle(&l->event, h), "cudaIpcOpenEventHandle");
    }
    cudaIpcMemHandle_t h;
    std::memcpy(&h, w.payload.data(), sizeof(h));
    void* p = nullptr;
    if (absl::Status s = IpcRecvCuda(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess),
                                     "cudaIpcOpenMemHandle");
        !s.ok()) {
      return s;
    }
    l->region_base.push_back(static_cast<char*>(p));
    return absl::OkStatus();
  }

  // The layer's blocks from the sender's memory into the posted views, once
  // the sender's producer is done, under a write lease.
  absl::Status CopyLayer(const std::shared_ptr<IpcRecvLink>& l, const IpcRecvWork& w) {
    if (w.verdict != LayerVerdict::kWrite) return absl::OkStatus();  // nothing to drain
    const std::vector<BlockView>* views = table_.AcquireWrite(w.xfer, w.layer);
    if (views == nullptr) return absl::OkStatus();  // ended meanwhile
    absl::Status s =
        IpcRecvCuda(cudaStreamWaitEvent(l->stream, l->event, 0), "cudaStreamWaitEvent");
    for (size_t i = 0; s.ok() && i < w.blocks.size(); ++i) {
      const SourceBlock& b = w.blocks[i];
      s = IpcRecvCuda(cudaMemcpyAsync((*views)[i].data, l->region_base[b.region] + b.offset,
                                      b.bytes, cudaMemcpyDeviceToDevice, l->stream),
                      "cudaMemcpyAsync (IPC)");
    }
    if (s.ok()) s = IpcRecvCuda(cudaStreamSynchronize(l->stream), "cudaStreamSynchronize");
    table_.ReleaseWrite(w.xfer);
    if (!s.ok()) return s;
    table_.EndLayer(l->id, w.xfer, w.layer, absl::OkStatus());
    return absl::OkStatus();
  }

  void Kill(const std::shared_ptr<IpcRecvLink>& l, const absl::Status& why) {
    if (l->dead.exchange(true)) return;
    PDS_LOG(INFO) << "IPC receiver: " << l->peer << " closed: " << why;
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

  static void Join(const std::shared_ptr<IpcRecvLink>& l) {
    if (l->reader.joinable()) l->reader.join();
    if (l->worker.joinable()) l->worker.join();
    if (!l->borrowed) {
      for (char* p : l->region_base) cudaIpcCloseMemHandle(p);
      if (l->event != nullptr) cudaEventDestroy(l->event);
    }
    l->region_base.clear();
    if (l->stream != nullptr) cudaStreamDestroy(l->stream);
    l->event = nullptr;
    l->stream = nullptr;
  }

  void TimerLoop() {
    for (;;) {
      std::vector<std::shared_ptr<IpcRecvLink>> reap;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (stopping_) return;
        reap.swap(dead_);
      }
      for (auto& l : reap) Join(l);
      const Deadline next = table_.ExpireDue(MonoClock::now());
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) return;
      const auto wait = std::min<Deadline>(next, MonoClock::now() + std::chrono::milliseconds(100));
      timer_cv_.wait_until(lock, wait, [&] { return stopping_ || !dead_.empty(); });
    }
  }

  const IpcReceiverOptions options_;
  const std::string host_id_;
  internal::TransferCounters counters_;
  internal::ReceiveTable table_;
  internal::UniqueFd listen_;
  std::string endpoint_;
  std::thread acceptor_, timer_;
  std::mutex mu_;
  std::condition_variable timer_cv_;
  bool stopping_ = false;
  LinkId next_link_ = 1;
  absl::flat_hash_map<LinkId, std::shared_ptr<IpcRecvLink>> links_;
  std::vector<std::shared_ptr<IpcRecvLink>> dead_;
};

absl::StatusOr<std::unique_ptr<IpcKvReceiver>> IpcKvReceiver::Create(IpcReceiverOptions options) {
  auto impl = std::make_shared<Impl>(std::move(options));
  if (absl::Status s = impl->Start(); !s.ok()) return s;
  return std::unique_ptr<IpcKvReceiver>(new IpcKvReceiver(std::move(impl)));
}

IpcKvReceiver::IpcKvReceiver(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
IpcKvReceiver::~IpcKvReceiver() { impl_->Stop(); }
std::string IpcKvReceiver::endpoint() const { return impl_->endpoint(); }
absl::Status IpcKvReceiver::Post(TransferId xfer_id, const TransferSecret& secret,
                                 std::vector<std::vector<BlockView>> layers, Deadline deadline,
                                 ReceiveDoneCallback on_done) {
  return impl_->table().Post(xfer_id, secret, std::move(layers), deadline, std::move(on_done));
}
absl::Status IpcKvReceiver::Cancel(TransferId xfer_id) { return impl_->table().Cancel(xfer_id); }
KvTransportStats IpcKvReceiver::stats() const { return impl_->stats(); }

}  // namespace pdserve::transport
