#include "transport/kv_transport_factory.h"

#include <array>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "transport/cuda_transports.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"

namespace pdserve::transport {
namespace {

bool IsLoopbackHost(absl::string_view host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || absl::StartsWith(host, "127.");
}

// The GPU transports live in the CUDA module (transport/cuda_transports.h):
// its table, or why this process cannot have them (module missing, a CUDA
// library missing, a module built without NCCL).
absl::StatusOr<const CudaTransports*> GpuTransports(KvTransportKind kind) {
  absl::StatusOr<const CudaTransports*> t = LoadCudaTransports();
  if (!t.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("--kv-transport ", KvTransportKindName(kind),
                                                      " on a GPU: ", t.status().message()));
  }
  if (kind == KvTransportKind::kNccl &&
      ((*t)->make_nccl_sender == nullptr || (*t)->make_nccl_receiver == nullptr)) {
    return absl::FailedPreconditionError(
        "--kv-transport nccl: this build has no NCCL (nccl.h or libnccl was not found at build "
        "time); use ipc (same host) or tcp");
  }
  return *t;
}

absl::StatusOr<std::unique_ptr<KvSender>> MakeIpcSender(const KvTransportConfig& c) {
  absl::StatusOr<const CudaTransports*> t = GpuTransports(KvTransportKind::kIpc);
  if (!t.ok()) return t.status();
  IpcSenderOptions o;
  o.device = c.gpu_device;
  return (*t)->make_ipc_sender(o, c.kv_regions);
}

absl::StatusOr<std::unique_ptr<KvSender>> MakeNcclSender(const KvTransportConfig& c) {
  absl::StatusOr<const CudaTransports*> t = GpuTransports(KvTransportKind::kNccl);
  if (!t.ok()) return t.status();
  NcclSenderOptions o;
  o.device = c.gpu_device;
  return (*t)->make_nccl_sender(o);
}

absl::StatusOr<std::unique_ptr<KvSender>> MakeTcpSender(const KvTransportConfig& c) {
  TcpSenderOptions o;
  o.checksum = c.checksum;
  absl::StatusOr<std::unique_ptr<TcpKvSender>> s = TcpKvSender::Create(o);
  if (!s.ok()) return s.status();
  if (c.gpu_device < 0) return std::unique_ptr<KvSender>(std::move(*s));
  absl::StatusOr<const CudaTransports*> t = GpuTransports(KvTransportKind::kTcp);
  if (!t.ok()) return t.status();
  HostStagedOptions ho;
  ho.device = c.gpu_device;
  return (*t)->make_host_staged_sender(std::move(*s), ho);
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
        made = MakeIpcSender(config_);
        break;
      case KvTransportKind::kNccl:
        made = MakeNcclSender(config_);
        break;
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
  if (kind != KvTransportKind::kNccl && kind != KvTransportKind::kIpc) return true;
  return GpuTransports(kind).ok();
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
  if (kind == KvTransportKind::kNccl || kind == KvTransportKind::kIpc) {
    if (absl::StatusOr<const CudaTransports*> t = GpuTransports(kind); !t.ok()) return t.status();
  }
  return kind;
}

absl::StatusOr<std::unique_ptr<KvReceiver>> MakeKvReceiver(const KvTransportConfig& c) {
  absl::StatusOr<KvTransportKind> kind = ResolveReceiverKind(c);
  if (!kind.ok()) return kind.status();
  switch (*kind) {
    case KvTransportKind::kIpc: {
      absl::StatusOr<const CudaTransports*> t = GpuTransports(*kind);
      if (!t.ok()) return t.status();
      IpcReceiverOptions o;
      o.device = c.gpu_device;
      o.listen_host = c.listen_host;
      o.advertise_host = c.advertise_host;
      o.port = c.port;
      return (*t)->make_ipc_receiver(o);
    }
    case KvTransportKind::kNccl: {
      absl::StatusOr<const CudaTransports*> t = GpuTransports(*kind);
      if (!t.ok()) return t.status();
      NcclReceiverOptions o;
      o.device = c.gpu_device;
      o.listen_host = c.listen_host;
      o.advertise_host = c.advertise_host;
      o.port = c.port;
      return (*t)->make_nccl_receiver(o);
    }
    default: {
      TcpReceiverOptions o;
      o.listen_host = c.listen_host;
      o.advertise_host = c.advertise_host;
      o.port = c.port;
      absl::StatusOr<std::unique_ptr<TcpKvReceiver>> r = TcpKvReceiver::Create(o);
      if (!r.ok()) return r.status();
      if (c.gpu_device < 0) return std::unique_ptr<KvReceiver>(std::move(*r));
      absl::StatusOr<const CudaTransports*> t = GpuTransports(KvTransportKind::kTcp);
      if (!t.ok()) return t.status();
      HostStagedOptions ho;
      ho.device = c.gpu_device;
      return (*t)->make_host_staged_receiver(std::move(*r), ho);
    }
  }
}

absl::StatusOr<std::unique_ptr<KvSender>> MakeKvSender(const KvTransportConfig& c) {
  if ((c.kind == KvTransportKind::kNccl || c.kind == KvTransportKind::kIpc) && c.gpu_device < 0) {
    return absl::FailedPreconditionError(absl::StrCat("--kv-transport ",
                                                      KvTransportKindName(c.kind),
                                                      " moves GPU memory: it needs --device cuda"));
  }
  if (c.gpu_device < 0 || c.kind == KvTransportKind::kTcp) return MakeTcpSender(c);
  if (c.kind == KvTransportKind::kAuto) {
    return std::unique_ptr<KvSender>(std::make_unique<SchemeSender>(c));
  }
  if (c.kind == KvTransportKind::kIpc) return MakeIpcSender(c);
  return MakeNcclSender(c);
}

}  // namespace pdserve::transport
