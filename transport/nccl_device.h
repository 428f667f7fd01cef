// The GPU side of one NCCL link (one sender/receiver pair): its
// communicator, stream, staging buffer, and the pack/send and recv/unpack
// steps. Used by one link thread at a time, except Abort(), which any thread
// may call to fail the link's current and later operations (NCCL aborts
// in-flight sends and receives, so a dead peer never hangs the link).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "transport/kv_transport.h"
#include "transport/nccl_compat.h"

namespace pdserve::transport::internal {

class NcclDevice {
 public:
  NcclDevice() = default;
  NcclDevice(const NcclDevice&) = delete;
  NcclDevice& operator=(const NcclDevice&) = delete;
  ~NcclDevice();

  // Selects the device on the calling thread and creates the stream.
  absl::Status Init(int device);
  // Joins the 2-rank communicator `id` as `rank`, waiting at most until the
  // deadline or an Abort().
  absl::Status InitComm(const ncclUniqueId& id, int rank, Deadline deadline);

  // Copies the views (device memory) into staging, in order, once
  // wait_for (if not null) has completed.
  absl::Status Pack(absl::Span<const ConstBlockView> views, size_t total,
                    cudaEvent_t wait_for = nullptr);
  // Copies staging into the views, in order.
  absl::Status Unpack(const std::vector<BlockView>& views);
  // One NCCL message of `bytes` from / into staging.
  absl::Status Send(size_t bytes, int peer);
  absl::Status Recv(size_t bytes, int peer);
  // Waits until the stream's queued work is done (or the link aborted).
  absl::Status Sync();
  absl::Status EnsureStaging(size_t bytes);

  void Abort();
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  int device() const { return device_; }

 private:
  absl::Status NcclStatus(ncclResult_t r, const char* what);
  absl::Status PointToPoint(bool send, size_t bytes, int peer);
  // ncclCommGetAsyncError under comm_mu_ (ncclRemoteError once aborted).
  ncclResult_t AsyncError(ncclResult_t* state);
  absl::Status EnsurePointers(size_t n);
  // Waits for a non-blocking communicator's last call to finish.
  absl::Status WaitComm(const char* what);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  // NCCL calls hold comm_mu_ so that Abort (any thread) never frees the
  // communicator under one; they are non-blocking, so it is held briefly.
  std::mutex comm_mu_;
  ncclComm_t comm_ = nullptr;  // guarded by comm_mu_
  std::atomic<bool> aborted_{false};
  void* staging_ = nullptr;  // device
  size_t staging_bytes_ = 0;
  void** host_ptrs_ = nullptr;  // pinned: block pointers for the pack kernels
  void** dev_ptrs_ = nullptr;   // device copy
  size_t ptr_capacity_ = 0;
};

}  // namespace pdserve::transport::internal
