#include "transport/kv_transport_factory.h"

#include <array>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"
#ifdef PDSERVE_HAVE_CUDA_IPC
#include "transport/host_staged.h"
#include "transport/ipc_receiver.h"
#include "transport/ipc_sender.h"
#endif
#ifdef PDSERVE_HAVE_NCCL
#include "transport/nccl_receiver.h"
#include "transport/nccl_sender.h"
#endif

namespace pdserve::transport {
namespace {

bool IsLoopbackHost(absl::string_view host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || absl::StartsWith(host, "127.");
}

absl::Status NotBuilt(KvTransportKind kind) {
  return absl::FailedPreconditionError(
      absl::StrCat("--kv-transport ", KvTransportKindName(kind), ": this build has no ",
                   kind == KvTransportKind::kNccl ? "NCCL" : "CUDA", " (",
                   KvTransportKindName(kind), " needs it)"));
}

#ifdef PDSERVE_HAVE_CUDA_IPC
absl::StatusOr<std::unique_ptr<KvSender>> MakeIpcSender(const KvTransportConfig& c) {
  IpcSenderOptions o;
  o.device = c.gpu_device;
  absl::StatusOr<std::unique_ptr<IpcKvSender>> s = IpcKvSender::Create(o);
  if (!s.ok()) return s.status();
  for (const auto& [base, bytes] : c.kv_regions) {
    if (absl::Status st = (*s)->RegisterRegion(base, bytes); !st.ok()) return st;
  }
  return std::unique_ptr<KvSender>(std::move(*s));
}
#endif

absl::StatusOr<std::unique_ptr<KvSender>> MakeTcpSender(const KvTransportConfig& c) {
  TcpSenderOptions o;
  o.checksum = c.checksum;
  absl::StatusOr<std::unique_ptr<TcpKvSender>> s = TcpKvSender::Create(o);
  if (!s.ok()) return s.status();
  if (c.gpu_device < 0) return std::unique_ptr<KvSender>(std::move(*s));
#ifdef PDSERVE_HAVE_CUDA_IPC
  HostStagedOptions ho;
  ho.device = c.gpu_device;
  return MakeHostStagedSender(std::move(*s), ho);
#else
  return NotBuilt(KvTransportKind::kIpc);
#endif
}

// auto on a GPU prefill node: one backend per endpoint scheme, each made
// when first needed.
class SchemeSender final : public KvSender {
 public:
  explicit SchemeSender(KvTransportConfig config) : config_(std::move(config)) {}

  absl::StatusOr<std::unique_ptr<KvSendHandle>> StartTransfer(TransferId xfer_id,
                                                              const TransferSecret& secret,
                                                              const std::string& peer,
                                                              int32_t n_layers, Deadline deadline,
                                                              SendDoneCallback on_done) override {
    const KvTransportKind kind = absl::StartsWith(peer, "ipc:")    ? KvTransportKind::kIpc
                                 : absl::StartsWith(peer, "nccl:") ? KvTransportKind::kNccl
                                                                   : KvTransportKind::kTcp;
    absl::StatusOr<KvSender*> s = Get(kind);
    if (!s.ok()) return s.status();
    return (*s)->StartTransfer(xfer_id, secret, peer, n_layers, deadline, std::move(on_done));
  }

  KvTransportStats stats() const override {
    KvTransportStats sum;
    absl::MutexLock lock(&mu_);
    for (const auto& s : senders_) {
      if (!s) continue;
      const KvTransportStats one = s->stats();
      sum.transfers_started += one.transfers_started;
      sum.transfers_ok += one.transfers_ok;
      sum.transfers_failed += one.transfers_failed;
      sum.bytes += one.bytes;
      sum.busy_ns += one.busy_ns;
      for (int i = 0; i < KvTransportStats::kNumCodes; ++i) {
        sum.failures_by_code[i] += one.failures_by_code[i];
      }
    }
    return sum;
  }

 private:
  absl::StatusOr<KvSender*> Get(KvTransportKind kind) {
    absl::MutexLock lock(&mu_);
    std::unique_ptr<KvSender>& slot = senders_[static_cast<int>(kind)];
    if (slot) return slot.get();
    absl::StatusOr<std::unique_ptr<KvSender>> made = absl::InternalError("unreachable");
    switch (kind) {
      case KvTransportKind::kIpc:
#ifdef PDSERVE_HAVE_CUDA_IPC
        made = MakeIpcSender(config_);
#else
        made = NotBuilt(kind);
#endif
        break;
      case KvTransportKind::kNccl: {
#ifdef PDSERVE_HAVE_NCCL
        NcclSenderOptions o;
        o.device = config_.gpu_device;
        absl::StatusOr<std::unique_ptr<NcclKvSender>> n = NcclKvSender::Create(o);
        if (n.ok()) {
          made = std::unique_ptr<KvSender>(std::move(*n));
        } else {
          made = n.status();
        }
#else
        made = NotBuilt(kind);
#endif
        break;
      }
      default:
        made = MakeTcpSender(config_);
        break;
    }
    if (!made.ok()) return made.status();
    slot = std::move(*made);
    return slot.get();
  }

  const KvTransportConfig config_;
  mutable absl::Mutex mu_;
  std::array<std::unique_ptr<KvSender>, 4> senders_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<KvTransportKind> ParseKvTransportKind(std::string_view name) {
  if (name == "auto") return KvTransportKind::kAuto;
  if (name == "tcp") return KvTransportKind::kTcp;
  if (name == "nccl") return KvTransportKind::kNccl;
  if (name == "ipc") return KvTransportKind::kIpc;
  return absl::InvalidArgumentError(
      absl::StrCat("--kv-transport must be auto, tcp, nccl or ipc, not '", std::string(name), "'"));
}

const char* KvTransportKindName(KvTransportKind kind) {
  switch (kind) {
    case KvTransportKind::kAuto:
      return "auto";
    case KvTransportKind::kTcp:
      return "tcp";
    case KvTransportKind::kNccl:
      return "nccl";
    case KvTransportKind::kIpc:
      return "ipc";
  }
  return "?";
}

bool KvTransportBuilt(KvTransportKind kind) {
  switch (kind) {
    case KvTransportKind::kNccl:
#ifdef PDSERVE_HAVE_NCCL
      return true;
#else
      return false;
#endif
    case KvTransportKind::kIpc:
#ifdef PDSERVE_HAVE_CUDA_IPC
      return true;
#else
      return false;
#endif
    default:
      return true;
  }
}

absl::StatusOr<KvTransportKind> ResolveReceiverKind(const KvTransportConfig& c) {
  KvTransportKind kind = c.kind;
  if (kind == KvTransportKind::kAuto) {
    const std::string& host = c.advertise_host.empty() ? c.listen_host : c.advertise_host;
    if (c.gpu_device < 0) {
      kind = KvTransportKind::kTcp;
    } else if (IsLoopbackHost(host) && KvTransportBuilt(KvTransportKind::kIpc)) {
      kind = KvTransportKind::kIpc;
    } else if (KvTransportBuilt(KvTransportKind::kNccl)) {
      kind = KvTransportKind::kNccl;
    } else {
      kind = KvTransportKind::kTcp;
    }
  }
  if ((kind == KvTransportKind::kNccl || kind == KvTransportKind::kIpc) && c.gpu_device < 0) {
    return absl::FailedPreconditionError(absl::StrCat("--kv-transport ", KvTransportKindName(kind),
                                                      " moves GPU memory: it needs --device cuda"));
  }
  if (!KvTransportBuilt(kind)) return NotBuilt(kind);
  return kind;
}

absl::StatusOr<std::unique_ptr<KvReceiver>> MakeKvReceiver(const KvTransportConfig& c) {
  absl::StatusOr<KvTransportKind> kind = ResolveReceiverKind(c);
  if (!kind.ok()) return kind.status();
  switch (*kind) {
    case KvTransportKind::kIpc: {
#ifdef PDSERVE_HAVE_CUDA_IPC
      IpcReceiverOptions o;
      o.device = c.gpu_device;
      o.listen_host = c.listen_host;
      o.advertise_host = c.advertise_host;
      o.port = c.port;
      absl::StatusOr<std::unique_ptr<IpcKvReceiver>> r = IpcKvReceiver::Create(o);
      if (!r.ok()) return r.status();
      return std::unique_ptr<KvReceiver>(std::move(*r));
#else
      return NotBuilt(*kind);
#endif
    }
    case KvTransportKind::kNccl: {
#ifdef PDSERVE_HAVE_NCCL
      NcclReceiverOptions o;
      o.device = c.gpu_device;
      o.listen_host = c.listen_host;
      o.advertise_host = c.advertise_host;
      o.port = c.port;
      absl::StatusOr<std::unique_ptr<NcclKvReceiver>> r = NcclKvReceiver::Create(o);
      if (!r.ok()) return r.status();
      return std::unique_ptr<KvReceiver>(std::move(*r));
#else
      return NotBuilt(*kind);
#endif
    }
    default: {
      TcpReceiverOptions o;
      o.listen_host = c.listen_host;
      o.advertise_host = c.advertise_host;
      o.port = c.port;
      absl::StatusOr<std::unique_ptr<TcpKvReceiver>> r = TcpKvReceiver::Create(o);
      if (!r.ok()) return r.status();
      if (c.gpu_device < 0) return std::unique_ptr<KvReceiver>(std::move(*r));
#ifdef PDSERVE_HAVE_CUDA_IPC
      HostStagedOptions ho;
      ho.device = c.gpu_device;
      return MakeHostStagedReceiver(std::move(*r), ho);
#else
      return NotBuilt(KvTransportKind::kIpc);
#endif
    }
  }
}

absl::StatusOr<std::unique_ptr<KvSender>> MakeKvSender(const KvTransportConfig& c) {
  if ((c.kind == KvTransportKind::kNccl || c.kind == KvTransportKind::kIpc) && c.gpu_device < 0) {
    return absl::FailedPreconditionError(absl::StrCat("--kv-transport ",
                                                      KvTransportKindName(c.kind),
                                                      " moves GPU memory: it needs --device cuda"));
  }
  if (!KvTransportBuilt(c.kind)) return NotBuilt(c.kind);
  if (c.gpu_device < 0 || c.kind == KvTransportKind::kTcp) return MakeTcpSender(c);
  if (c.kind == KvTransportKind::kAuto) {
    return std::unique_ptr<KvSender>(std::make_unique<SchemeSender>(c));
  }
#ifdef PDSERVE_HAVE_CUDA_IPC
  if (c.kind == KvTransportKind::kIpc) return MakeIpcSender(c);
#endif
#ifdef PDSERVE_HAVE_NCCL
  NcclSenderOptions o;
  o.device = c.gpu_device;
  absl::StatusOr<std::unique_ptr<NcclKvSender>> n = NcclKvSender::Create(o);
  if (!n.ok()) return n.status();
  return std::unique_ptr<KvSender>(std::move(*n));
#else
  return NotBuilt(c.kind);
#endif
}

}  // namespace pdserve::transport
