#include "engine/cuda_module.h"

#include "absl/strings/str_cat.h"
#include "common/dynamic_module.h"

namespace pdserve {

absl::StatusOr<const CudaBackendModule*> LoadCudaBackendModuleFrom(const std::string& path) {
  absl::StatusOr<void*> entry = LoadModuleEntry(path, kCudaBackendEntry, "the CUDA backend");
  if (!entry.ok()) return entry.status();
  using Entry = const CudaBackendModule* (*)();
  const CudaBackendModule* m = reinterpret_cast<Entry>(*entry)();
  if (m == nullptr || m->abi_version != kCudaBackendAbiVersion ||
      m->table_size != sizeof(CudaBackendModule) || m->create_backend == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " was built for another pdserve (backend ABI ", m ? m->abi_version : -1,
                     ", this binary's ", kCudaBackendAbiVersion,
                     "); install the libpdserve_cuda.so built with this binary"));
  }
  return m;
}

absl::StatusOr<const CudaBackendModule*> LoadCudaBackendModule() {
  static const absl::StatusOr<const CudaBackendModule*>* const loaded =
      new absl::StatusOr<const CudaBackendModule*>(
          LoadCudaBackendModuleFrom(DefaultCudaModulePath()));
  return *loaded;
}

}  // namespace pdserve
