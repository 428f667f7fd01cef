// The CUDA backend's entry in the CUDA module (common/dynamic_module.h):
// CreateBackend("cuda...") loads libpdserve_cuda.so from beside the binary
// and builds the backend through this table, so pdserve itself links no CUDA
// library. The module is built with the binary (cli/CMakeLists.txt) wherever
// nvcc exists; the binary exports its symbols, so the module shares its
// state (the log level) instead of using the copies it carries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace pdserve {

// Bump when this table or any type it passes changes layout.
inline constexpr int32_t kCudaBackendAbiVersion = 1;
// The module's entry point: `const CudaBackendModule* pdserve_cuda_backend_v1()`.
inline constexpr char kCudaBackendEntry[] = "pdserve_cuda_backend_v1";

struct CudaBackendModule {
  int32_t abi_version = 0;
  size_t table_size = 0;  // sizeof(CudaBackendModule) as the module was built
  // "cuda" or "cuda:N": see cuda::CreateCudaBackend.
  absl::StatusOr<std::unique_ptr<Backend>> (*create_backend)(std::string_view device) = nullptr;
};

// The table of the module beside the running executable, loaded on the first
// call; later calls return the same table, or the same error
// (FailedPrecondition, see LoadModuleEntry).
absl::StatusOr<const CudaBackendModule*> LoadCudaBackendModule();

// The table of the module at `path` (not cached). For tests and for
// LoadCudaBackendModule.
absl::StatusOr<const CudaBackendModule*> LoadCudaBackendModuleFrom(const std::string& path);

}  // namespace pdserve
