// The CUDA backend's entry point in libpdserve_cuda.so (engine/cuda_module.h).
#include <memory>
#include <string_view>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda_module.h"

namespace pdserve {
namespace {

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device) {
  return cuda::CreateCudaBackend(device);
}

CudaBackendModule MakeTable() {
  CudaBackendModule m;
  m.abi_version = kCudaBackendAbiVersion;
  m.table_size = sizeof(CudaBackendModule);
  m.create_backend = &CreateBackend;
  return m;
}

}  // namespace
}  // namespace pdserve

extern "C" __attribute__((visibility("default"))) const pdserve::CudaBackendModule*
pdserve_cuda_backend_v1() {
  static const pdserve::CudaBackendModule table = pdserve::MakeTable();
  return &table;
}
