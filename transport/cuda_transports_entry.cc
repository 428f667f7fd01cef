// The GPU KV transports' entry point in libpdserve_cuda.so
// (transport/cuda_transports.h). Built into the module only.
#include <memory>
#include <utility>

#include "transport/cuda_transports.h"

namespace pdserve::transport {
namespace {

absl::StatusOr<std::unique_ptr<KvSender>> MakeIpcSender(
    const IpcSenderOptions& options, absl::Span<const std::pair<const void*, size_t>> regions) {
  absl::StatusOr<std::unique_ptr<IpcKvSender>> s = IpcKvSender::Create(options);
  if (!s.ok()) return s.status();
  for (const auto& [base, bytes] : regions) {
    if (absl::Status st = (*s)->RegisterRegion(base, bytes); !st.ok()) return st;
  }
  return std::unique_ptr<KvSender>(std::move(*s));
}

absl::StatusOr<std::unique_ptr<KvReceiver>> MakeIpcReceiver(const IpcReceiverOptions& options) {
  absl::StatusOr<std::unique_ptr<IpcKvReceiver>> r = IpcKvReceiver::Create(options);
  if (!r.ok()) return r.status();
  return std::unique_ptr<KvReceiver>(std::move(*r));
}

absl::StatusOr<std::unique_ptr<KvSender>> MakeStagedSender(std::unique_ptr<KvSender> inner,
                                                           const HostStagedOptions& options) {
  return MakeHostStagedSender(std::move(inner), options);
}

absl::StatusOr<std::unique_ptr<KvReceiver>> MakeStagedReceiver(std::unique_ptr<KvReceiver> inner,
                                                               const HostStagedOptions& options) {
  return MakeHostStagedReceiver(std::move(inner), options);
}

#ifdef PDSERVE_HAVE_NCCL
absl::StatusOr<std::unique_ptr<KvSender>> MakeNcclSender(const NcclSenderOptions& options) {
  absl::StatusOr<std::unique_ptr<NcclKvSender>> s = NcclKvSender::Create(options);
  if (!s.ok()) return s.status();
  return std::unique_ptr<KvSender>(std::move(*s));
}

absl::StatusOr<std::unique_ptr<KvReceiver>> MakeNcclReceiver(const NcclReceiverOptions& options) {
  absl::StatusOr<std::unique_ptr<NcclKvReceiver>> r = NcclKvReceiver::Create(options);
  if (!r.ok()) return r.status();
  return std::unique_ptr<KvReceiver>(std::move(*r));
}
#endif

CudaTransports MakeTable() {
  CudaTransports t;
  t.abi_version = kCudaTransportsAbiVersion;
  t.table_size = sizeof(CudaTransports);
  t.make_ipc_sender = &MakeIpcSender;
  t.make_ipc_receiver = &MakeIpcReceiver;
  t.make_host_staged_sender = &MakeStagedSender;
  t.make_host_staged_receiver = &MakeStagedReceiver;
#ifdef PDSERVE_HAVE_NCCL
  t.make_nccl_sender = &MakeNcclSender;
  t.make_nccl_receiver = &MakeNcclReceiver;
#endif
  return t;
}

}  // namespace
}  // namespace pdserve::transport

extern "C" __attribute__((visibility("default"))) const pdserve::transport::CudaTransports*
pdserve_cuda_transports_v1() {
  static const pdserve::transport::CudaTransports table = pdserve::transport::MakeTable();
  return &table;
}
