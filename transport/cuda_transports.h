// The GPU KV transports' entry in the CUDA module (common/dynamic_module.h):
// NCCL, CUDA IPC and host-staged tcp link cudart (and NCCL), so they live in
// libpdserve_cuda.so with the CUDA backend, and pdserve_transport reaches
// them only through this table (kv_transport_factory.cc). A GPU node loads
// the module for its backend first; the transports then share it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "transport/host_staged.h"
#include "transport/ipc_receiver.h"
#include "transport/ipc_sender.h"
#include "transport/kv_transport.h"
#include "transport/nccl_receiver.h"
#include "transport/nccl_sender.h"

namespace pdserve::transport {

// Bump when this table or any type it passes changes layout.
inline constexpr int32_t kCudaTransportsAbiVersion = 1;
// The module's entry point: `const CudaTransports* pdserve_cuda_transports_v1()`.
inline constexpr char kCudaTransportsEntry[] = "pdserve_cuda_transports_v1";

struct CudaTransports {
  int32_t abi_version = 0;
  size_t table_size = 0;  // sizeof(CudaTransports) as the module was built
  // CUDA IPC (same host). The sender exports `regions` (base, bytes), each
  // the start of a cudaMalloc allocation: IpcKvSender::RegisterRegion.
  absl::StatusOr<std::unique_ptr<KvSender>> (*make_ipc_sender)(
      const IpcSenderOptions& options,
      absl::Span<const std::pair<const void*, size_t>> regions) = nullptr;
  absl::StatusOr<std::unique_ptr<KvReceiver>> (*make_ipc_receiver)(
      const IpcReceiverOptions& options) = nullptr;
  // Device KV over a host-memory backend (transport/host_staged.h).
  absl::StatusOr<std::unique_ptr<KvSender>> (*make_host_staged_sender)(
      std::unique_ptr<KvSender> inner, const HostStagedOptions& options) = nullptr;
  absl::StatusOr<std::unique_ptr<KvReceiver>> (*make_host_staged_receiver)(
      std::unique_ptr<KvReceiver> inner, const HostStagedOptions& options) = nullptr;
  // NCCL: null where the module was built without NCCL.
  absl::StatusOr<std::unique_ptr<KvSender>> (*make_nccl_sender)(const NcclSenderOptions& options) =
      nullptr;
  absl::StatusOr<std::unique_ptr<KvReceiver>> (*make_nccl_receiver)(
      const NcclReceiverOptions& options) = nullptr;
};

// The table of the module beside the running executable, loaded on the first
// call; later calls return the same table, or the same error
// (FailedPrecondition naming the module and what is missing).
absl::StatusOr<const CudaTransports*> LoadCudaTransports();

// The table of the module at `path` (not cached). For tests.
absl::StatusOr<const CudaTransports*> LoadCudaTransportsFrom(const std::string& path);

}  // namespace pdserve::transport
