#include "transport/ipc_receiver.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_compat.h"
#include "kernels/cuda/kv_pack.h"
#include "transport/control_link.h"
#include "transport/ipc_sender.h"
#include "transport/nccl_wire.h"

namespace pdserve::transport {

using internal::ControlLink;
using internal::LayerVerdict;
using internal::NcclFrame;
using internal::NcclFrameType;

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

struct IpcRecvLink final : ControlLink {
  std::deque<IpcRecvWork> work;  // guarded by mu
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
  // A layer's block copies, listed here and run as one kernel.
  std::vector<kernels::cuda::CopySpan> spans;
  kernels::cuda::CopySpan* spans_dev = nullptr;
  size_t spans_cap = 0;
};

}  // namespace internal

using internal::IpcRecvCuda;
using internal::IpcRecvLink;
using internal::IpcRecvWork;
using internal::SourceBlock;

namespace {

IpcRecvLink& Ipc(const std::shared_ptr<ControlLink>& l) { return static_cast<IpcRecvLink&>(*l); }

}  // namespace

class IpcKvReceiver::Impl final : public internal::ControlPort {
 public:
  explicit Impl(IpcReceiverOptions options)
      : ControlPort(internal::MakePortOptions(options, "IPC receiver", kIpcScheme)),
        options_(std::move(options)),
        host_id_(internal::HostIdentity()) {}

 private:
  std::shared_ptr<ControlLink> NewLink() override { return std::make_shared<IpcRecvLink>(); }

  // The sender's memory and event stay open until the link's threads ended.
  void OnJoined(ControlLink& link) override {
    IpcRecvLink& l = static_cast<IpcRecvLink&>(link);
    if (!l.borrowed) {
      for (char* p : l.region_base) cudaIpcCloseMemHandle(p);
      if (l.event != nullptr) cudaEventDestroy(l.event);
    }
    l.region_base.clear();
    if (l.stream != nullptr) cudaStreamDestroy(l.stream);
    if (l.spans_dev != nullptr) cudaFree(l.spans_dev);
    l.event = nullptr;
    l.stream = nullptr;
    l.spans_dev = nullptr;
    l.spans_cap = 0;
  }

  void ReadLoop(const std::shared_ptr<ControlLink>& link) override {
    IpcRecvLink& l = Ipc(link);
    NcclFrame hello;
    absl::Status s = internal::ReadNcclFrame(l.fd.get(), &hello, 512);
    if (s.ok() &&
        (hello.type != NcclFrameType::kHello || hello.payload.size() <= internal::kIpcNonceBytes)) {
      s = absl::InvalidArgumentError("IPC control connection did not start with Hello");
    }
    if (s.ok()) {
      l.same_process =
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
      l.Write(nack).IgnoreError();
    }
    if (!s.ok()) {
      if (absl::IsInvalidArgument(s)) counters_.ProtocolError();
      return Kill(link, s);
    }
    const uint32_t max_payload = MaxPayload(internal::kIpcBlockEntryBytes);
    for (;;) {
      NcclFrame f;
      if (!ReadFrame(link, &f, max_payload)) return;
      const TransferId xfer{f.xfer};
      switch (f.type) {
        case NcclFrameType::kBegin:
          if (!Announce(link, f)) return;
          break;
        case NcclFrameType::kHandle: {
          // Only a sender that proved a secret may make this node map memory.
          if (!table_.LinkVerified(l.id)) return Bad(link, "IPC handle before any verified Begin");
          if (f.payload.size() != internal::kIpcHandleFrameBytes) {
            return Bad(link, "bad IPC handle frame size");
          }
          if (f.arg0 == -1) {
            if (l.have_event) return Bad(link, "IPC event handle sent twice");
            l.have_event = true;
          } else {
            if (f.arg0 != static_cast<int64_t>(l.region_bytes.size()) ||
                f.arg0 >= internal::kIpcMaxRegions || f.arg1 <= 0 || f.arg1 > (int64_t{1} << 48)) {
              return Bad(link, absl::StrCat("bad IPC region ", f.arg0, " of ", f.arg1, " bytes"));
            }
            l.region_bytes.push_back(static_cast<uint64_t>(f.arg1));
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
            return Bad(link, absl::StrCat("bad Layer frame for transfer ", f.xfer));
          }
          if (!l.have_event) return Bad(link, "Layer frame before the IPC handles");
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
            if (b.region >= l.region_bytes.size() || b.bytes > l.region_bytes[b.region] ||
                b.offset > l.region_bytes[b.region] - b.bytes) {
              return Bad(link, absl::StrCat("Layer frame for transfer ", f.xfer, ": block ", i,
                                            " lies outside IPC region ", b.region));
            }
            if (b.bytes > options_.limits.max_layer_bytes - total) {
              return Bad(link, absl::StrCat("Layer frame for transfer ", f.xfer, " over ",
                                            options_.limits.max_layer_bytes, " bytes"));
            }
            total += b.bytes;
            sizes[i] = b.bytes;
          }
          std::string error;
          w.verdict = table_.BeginLayer(l.id, xfer, w.layer, sizes, &error);
          if (w.verdict == LayerVerdict::kProtocolError) return Bad(link, error);
          Push(l, std::move(w));
          break;
        }
        case NcclFrameType::kTrailer: {
          IpcRecvWork w;
          w.kind = IpcRecvWork::kTrailer;
          w.xfer = xfer;
          if (absl::Status t = internal::SplitTrailer(std::move(f.payload), &w.payload, &w.tag);
              !t.ok()) {
            return Bad(link, std::string(t.message()));
          }
          Push(l, std::move(w));
          break;
        }
        case NcclFrameType::kAbort: {
          IpcRecvWork w;
          w.kind = IpcRecvWork::kAbort;
          w.xfer = xfer;
          w.layer = internal::AbortCode(f);
          Push(l, std::move(w));
          break;
        }
        default:
          return Bad(link, "unexpected IPC control frame from a sender");
      }
    }
  }

  static void Push(IpcRecvLink& l, IpcRecvWork w) {
    {
      std::lock_guard<std::mutex> lock(l.mu);
      l.work.push_back(std::move(w));
    }
    l.cv.notify_all();
  }

  void WorkLoop(const std::shared_ptr<ControlLink>& link) override {
    IpcRecvLink& l = Ipc(link);
    absl::Status s = IpcRecvCuda(cudaSetDevice(options_.device), "cudaSetDevice");
    if (s.ok()) {
      s = IpcRecvCuda(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking),
                      "cudaStreamCreate");
    }
    if (!s.ok()) return Kill(link, s);
    // A link that never proves a secret is closed after verify_timeout_ms.
    if (!AwaitVerified(link, [] { return true; })) return;
    for (;;) {
      IpcRecvWork w;
      {
        std::unique_lock<std::mutex> lock(l.mu);
        l.cv.wait(lock, [&] { return l.closing || !l.work.empty(); });
        if (l.closing) return;
        w = std::move(l.work.front());
        l.work.pop_front();
      }
      switch (w.kind) {
        case IpcRecvWork::kHandle:
          s = OpenHandle(l, w);
          if (!s.ok()) return Kill(link, s);
          break;
        case IpcRecvWork::kLayer:
          s = CopyLayer(l, w);
          if (!s.ok()) return Kill(link, s);
          break;
        case IpcRecvWork::kTrailer:
          if (!table_.Trailer(l.id, w.xfer, std::move(w.payload), w.tag, absl::OkStatus())) {
            return Kill(link,
                        absl::InvalidArgumentError("Trailer for a transfer not open on the link"));
          }
          break;
        case IpcRecvWork::kAbort: {
          table_.SenderAborted(l.id, w.xfer, static_cast<absl::StatusCode>(w.layer));
          // Every earlier copy is done (this worker ran them in order): the
          // sender may reuse its blocks.
          NcclFrame f;
          f.type = NcclFrameType::kReleased;
          f.xfer = w.xfer.value;
          if (s = l.Write(f); !s.ok()) return Kill(link, s);
          break;
        }
      }
    }
  }

  static absl::Status OpenHandle(IpcRecvLink& l, const IpcRecvWork& w) {
    if (l.same_process) {
      // CUDA does not open a process's own handles: use its pointers.
      uint64_t p;
      std::memcpy(&p, w.payload.data() + sizeof(cudaIpcMemHandle_t), sizeof(p));
      l.borrowed = true;
      if (w.layer == -1) {
        l.event = reinterpret_cast<cudaEvent_t>(p);
      } else {
        l.region_base.push_back(reinterpret_cast<char*>(p));
      }
      return absl::OkStatus();
    }
    if (w.layer == -1) {
      cudaIpcEventHandle_t h;
      std::memcpy(&h, w.payload.data(), sizeof(h));
      return IpcRecvCuda(cudaIpcOpenEventHandle(&l.event, h), "cudaIpcOpenEventHandle");
    }
    cudaIpcMemHandle_t h;
    std::memcpy(&h, w.payload.data(), sizeof(h));
    void* p = nullptr;
    if (absl::Status s = IpcRecvCuda(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess),
                                     "cudaIpcOpenMemHandle");
        !s.ok()) {
      return s;
    }
    l.region_base.push_back(static_cast<char*>(p));
    return absl::OkStatus();
  }

  // The layer's blocks from the sender's memory into the posted views, once
  // the sender's producer is done, under a write lease.
  absl::Status CopyLayer(IpcRecvLink& l, const IpcRecvWork& w) {
    if (w.verdict != LayerVerdict::kWrite) return absl::OkStatus();  // nothing to drain
    const std::vector<BlockView>* views = table_.AcquireWrite(w.xfer, w.layer);
    if (views == nullptr) return absl::OkStatus();  // ended meanwhile
    absl::Status s = IpcRecvCuda(cudaStreamWaitEvent(l.stream, l.event, 0), "cudaStreamWaitEvent");
    // One kernel for the layer's blocks: one cudaMemcpyAsync per block (a
    // few KiB to 64 KiB each) ran at ~11 GB/s on an H200, bound by launches.
    l.spans.clear();
    int64_t widest = 0;
    for (size_t i = 0; i < w.blocks.size(); ++i) {
      const SourceBlock& b = w.blocks[i];
      l.spans.push_back(
          {l.region_base[b.region] + b.offset, (*views)[i].data, static_cast<int64_t>(b.bytes)});
      widest = std::max(widest, static_cast<int64_t>(b.bytes));
    }
    const size_t n = l.spans.size();
    if (s.ok() && n > l.spans_cap) {
      if (l.spans_dev != nullptr) cudaFree(l.spans_dev);
      l.spans_dev = nullptr;
      l.spans_cap = 0;
      s = IpcRecvCuda(cudaMalloc(reinterpret_cast<void**>(&l.spans_dev),
                                 std::max<size_t>(n, 64) * sizeof(kernels::cuda::CopySpan)),
                      "cudaMalloc (IPC copy list)");
      if (s.ok()) l.spans_cap = std::max<size_t>(n, 64);
    }
    if (s.ok() && n > 0) {
      s = IpcRecvCuda(
          cudaMemcpyAsync(l.spans_dev, l.spans.data(), n * sizeof(kernels::cuda::CopySpan),
                          cudaMemcpyHostToDevice, l.stream),
          "cudaMemcpyAsync (IPC copy list)");
      if (s.ok()) {
        s = IpcRecvCuda(
            kernels::cuda::CopySpans(l.spans_dev, static_cast<int64_t>(n), widest, l.stream),
            "IPC block copy");
      }
    }
    if (s.ok()) s = IpcRecvCuda(cudaStreamSynchronize(l.stream), "cudaStreamSynchronize");
    table_.ReleaseWrite(w.xfer);
    if (!s.ok()) return s;
    table_.EndLayer(l.id, w.xfer, w.layer, absl::OkStatus());
    return absl::OkStatus();
  }

  const IpcReceiverOptions options_;
  const std::string host_id_;
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
