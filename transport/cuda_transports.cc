#include "transport/cuda_transports.h"

#include "absl/strings/str_cat.h"
#include "common/dynamic_module.h"

namespace pdserve::transport {

absl::StatusOr<const CudaTransports*> LoadCudaTransportsFrom(const std::string& path) {
  absl::StatusOr<void*> entry =
      LoadModuleEntry(path, kCudaTransportsEntry, "the GPU KV transports (nccl, ipc, tcp on GPU)");
  if (!entry.ok()) return entry.status();
  using Entry = const CudaTransports* (*)();
  const CudaTransports* t = reinterpret_cast<Entry>(*entry)();
  if (t == nullptr || t->abi_version != kCudaTransportsAbiVersion ||
      t->table_size != sizeof(CudaTransports) || t->make_ipc_sender == nullptr ||
      t->make_ipc_receiver == nullptr || t->make_host_staged_sender == nullptr ||
      t->make_host_staged_receiver == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " was built for another pdserve (transports ABI ",
                     t ? t->abi_version : -1, ", this binary's ", kCudaTransportsAbiVersion,
                     "); install the libpdserve_cuda.so built with this binary"));
  }
  return t;
}

absl::StatusOr<const CudaTransports*> LoadCudaTransports() {
  static const absl::StatusOr<const CudaTransports*>* const loaded =
      new absl::StatusOr<const CudaTransports*>(LoadCudaTransportsFrom(DefaultCudaModulePath()));
  return *loaded;
}

}  // namespace pdserve::transport
