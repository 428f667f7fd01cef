#include "transport/nccl_receiver.h"

#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "transport/control_link.h"
#include "transport/nccl_device.h"
#include "transport/nccl_wire.h"

namespace pdserve::transport {

using internal::LayerVerdict;
using internal::NcclFrame;
using internal::NcclFrameType;

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
struct NcclRecvLink final : ControlLink {
  NcclDevice dev;
  std::deque<NcclRecvWork> work;  // guarded by mu
  std::string hello;              // guarded by mu: the sender's ncclUniqueId
};

}  // namespace internal

using internal::ControlLink;
using internal::NcclRecvLink;
using internal::NcclRecvWork;

namespace {

NcclRecvLink& Nccl(const std::shared_ptr<ControlLink>& l) { return static_cast<NcclRecvLink&>(*l); }

}  // namespace

class NcclKvReceiver::Impl final : public internal::ControlPort {
 public:
  explicit Impl(NcclReceiverOptions options)
      : ControlPort(internal::MakePortOptions(options, "NCCL receiver", internal::kNcclScheme)),
        options_(std::move(options)) {}

 private:
  std::shared_ptr<ControlLink> NewLink() override { return std::make_shared<NcclRecvLink>(); }
  // Aborting the communicator unblocks a worker inside an NCCL receive.
  void OnClose(ControlLink& l) override { static_cast<NcclRecvLink&>(l).dev.Abort(); }

  void ReadLoop(const std::shared_ptr<ControlLink>& l) override {
    NcclFrame hello;
    absl::Status s = internal::ReadNcclFrame(l->fd.get(), &hello, sizeof(ncclUniqueId));
    if (s.ok() &&
        (hello.type != NcclFrameType::kHello || hello.payload.size() != sizeof(ncclUniqueId))) {
      s = absl::InvalidArgumentError("NCCL control connection did not start with Hello");
    }
    if (!s.ok()) return Kill(l, s);
    {
      std::lock_guard<std::mutex> lock(l->mu);
      Nccl(l).hello = std::move(hello.payload);
    }
    l->cv.notify_all();
    const uint32_t max_payload = MaxPayload(8);
    for (;;) {
      NcclFrame f;
      if (!ReadFrame(l, &f, max_payload)) return;
      const TransferId xfer{f.xfer};
      switch (f.type) {
        case NcclFrameType::kBegin:
          if (!Announce(l, f)) return;
          break;
        case NcclFrameType::kLayer: {
          const size_t n_blocks = f.payload.size() / 8;
          if (f.payload.size() % 8 != 0 || n_blocks == 0 ||
              n_blocks > options_.limits.max_blocks_per_layer || f.arg0 < 0 ||
              f.arg0 >= options_.limits.max_layers) {
            return Bad(l, absl::StrCat("bad Layer frame for transfer ", f.xfer));
          }
          std::vector<uint64_t> sizes(n_blocks);
          std::memcpy(sizes.data(), f.payload.data(), f.payload.size());
          uint64_t total = 0;
          for (uint64_t b : sizes) {
            if (b > options_.limits.max_layer_bytes - total) {
              return Bad(l, absl::StrCat("Layer frame for transfer ", f.xfer, " over ",
                                         options_.limits.max_layer_bytes, " bytes"));
            }
            total += b;
          }
          std::string error;
          const LayerVerdict v =
              table_.BeginLayer(l->id, xfer, static_cast<int32_t>(f.arg0), sizes, &error);
          if (v == LayerVerdict::kProtocolError) return Bad(l, error);
          Push(l, {NcclRecvWork::kLayer, xfer, static_cast<int32_t>(f.arg0), total, v, {}, {}});
          break;
        }
        case NcclFrameType::kTrailer: {
          NcclRecvWork w{NcclRecvWork::kTrailer, xfer, 0, 0, LayerVerdict::kDiscard, {}, {}};
          if (absl::Status t = internal::SplitTrailer(std::move(f.payload), &w.trailer, &w.tag);
              !t.ok()) {
            return Bad(l, std::string(t.message()));
          }
          Push(l, std::move(w));
          break;
        }
        case NcclFrameType::kAbort:
          // The sender's reason (a status code), carried in `layer`.
          Push(l, {NcclRecvWork::kAbort,
                   xfer,
                   internal::AbortCode(f),
                   0,
                   LayerVerdict::kDiscard,
                   {},
                   {}});
          break;
        default:
          return Bad(l, "unexpected NCCL control frame from a sender");
      }
    }
  }

  void Push(const std::shared_ptr<ControlLink>& l, NcclRecvWork w) {
    {
      std::lock_guard<std::mutex> lock(l->mu);
      Nccl(l).work.push_back(std::move(w));
    }
    l->cv.notify_all();
  }

  void WorkLoop(const std::shared_ptr<ControlLink>& link) override {
    NcclRecvLink& l = Nccl(link);
    absl::Status s = l.dev.Init(options_.device);
    ncclUniqueId id;
    // Join the sender's communicator only once it proved a secret: an
    // anonymous peer gets no NCCL resources, and no slot for long.
    if (!AwaitVerified(link, [&] {
          if (l.hello.empty()) return false;
          std::memcpy(&id, l.hello.data(), sizeof(id));
          return true;
        })) {
      return;
    }
    if (s.ok()) {
      s = l.dev.InitComm(
          id, 1, MonoClock::now() + std::chrono::milliseconds(options_.comm_init_timeout_ms));
    }
    if (!s.ok()) return Kill(link, s);
    for (;;) {
      NcclRecvWork w;
      {
        std::unique_lock<std::mutex> lock(l.mu);
        l.cv.wait(lock, [&] { return l.closing || !l.work.empty(); });
        if (l.closing) return;
        w = std::move(l.work.front());
        l.work.pop_front();
      }
      switch (w.kind) {
        case NcclRecvWork::kLayer:
          s = ReceiveLayer(l, w);
          if (!s.ok()) return Kill(link, s);
          break;
        case NcclRecvWork::kTrailer:
          if (!table_.Trailer(l.id, w.xfer, std::move(w.trailer), w.tag, absl::OkStatus())) {
            return Kill(link,
                        absl::InvalidArgumentError("Trailer for a transfer not open on the link"));
          }
          break;
        case NcclRecvWork::kAbort:
          table_.SenderAborted(l.id, w.xfer, static_cast<absl::StatusCode>(w.layer));
          break;
      }
    }
  }

  // The layer's bytes into staging; then, under a write lease, into the
  // posted blocks. The lease is only held for the unpack copy, never while
  // waiting on the network.
  absl::Status ReceiveLayer(NcclRecvLink& l, const NcclRecvWork& w) {
    if (absl::Status s = l.dev.Recv(w.bytes, 0); !s.ok()) return s;
    if (absl::Status s = l.dev.Sync(); !s.ok()) return s;
    if (w.verdict != LayerVerdict::kWrite) return absl::OkStatus();
    const std::vector<BlockView>* views = table_.AcquireWrite(w.xfer, w.layer);
    if (views == nullptr) return absl::OkStatus();  // ended meanwhile: dropped
    absl::Status s = l.dev.Unpack(*views);
    if (s.ok()) s = l.dev.Sync();
    table_.ReleaseWrite(w.xfer);
    if (!s.ok()) return s;
    table_.EndLayer(l.id, w.xfer, w.layer, absl::OkStatus());
    return absl::OkStatus();
  }

  const NcclReceiverOptions options_;
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
