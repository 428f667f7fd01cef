#include "transport/nccl_device.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/kv_pack.h"

namespace pdserve::transport::internal {
namespace {

absl::Status CudaError(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat("NCCL transport: ", what, ": ", cudaGetErrorString(e)));
}

// Polling back-off: spin briefly (a layer completes in microseconds), then sleep.
void Pause(int round) {
  if (round < 64) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace

NcclDevice::~NcclDevice() {
  cudaSetDevice(device_);
  Abort();
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  if (done_ != nullptr) cudaEventDestroy(done_);
  if (staging_ != nullptr) cudaFree(staging_);
  if (dev_ptrs_ != nullptr) cudaFree(dev_ptrs_);
  if (host_ptrs_ != nullptr) cudaFreeHost(host_ptrs_);
}

absl::Status NcclDevice::Init(int device) {
  device_ = device;
  if (absl::Status s = CudaError(cudaSetDevice(device), "selecting the GPU"); !s.ok()) return s;
  if (absl::Status s = CudaError(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                 "creating a stream");
      !s.ok()) {
    return s;
  }
  return CudaError(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "creating an event");
}

absl::Status NcclDevice::NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat("NCCL ", what, ": ", ncclGetErrorString(r));
  if (r == ncclRemoteError || r == ncclSystemError || aborted()) {
    return absl::UnavailableError(msg);
  }
  return r == ncclInvalidUsage || r == ncclInvalidArgument ? absl::FailedPreconditionError(msg)
                                                           : absl::InternalError(msg);
}

ncclResult_t NcclDevice::AsyncError(ncclResult_t* state) {
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (comm_ == nullptr) {
    *state = ncclRemoteError;
    return ncclSuccess;
  }
  return ncclCommGetAsyncError(comm_, state);
}

absl::Status NcclDevice::WaitComm(const char* what) {
  for (int round = 0;; ++round) {
    if (aborted()) return absl::UnavailableError(absl::StrCat("NCCL ", what, ": link aborted"));
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = AsyncError(&state);
    if (r != ncclSuccess) return NcclStatus(r, what);
    if (state != ncclInProgress) return NcclStatus(state, what);
    Pause(round);
  }
}

absl::Status NcclDevice::InitComm(const ncclUniqueId& id, int rank, Deadline deadline) {
  cudaSetDevice(device_);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a peer that never joins cannot hang us
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, 2, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) return NcclStatus(r, "communicator init");
  {
    std::lock_guard<std::mutex> lock(comm_mu_);
    if (aborted()) {
      ncclCommAbort(comm);
      return absl::UnavailableError("NCCL communicator init: link aborted");
    }
    comm_ = comm;
  }
  for (int round = 0;; ++round) {
    if (aborted()) return absl::UnavailableError("NCCL communicator init: link aborted");
    ncclResult_t state = ncclSuccess;
    AsyncError(&state);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclStatus(state, "communicator init");
    if (MonoClock::now() > deadline) {
      Abort();
      return absl::DeadlineExceededError("NCCL communicator init: the peer did not join in time");
    }
    Pause(round);
  }
}

void NcclDevice::Abort() {
  aborted_.store(true, std::memory_order_release);
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (comm_ != nullptr) ncclCommAbort(comm_);
  comm_ = nullptr;
}

absl::Status NcclDevice::EnsureStaging(size_t bytes) {
  if (bytes <= staging_bytes_) return absl::OkStatus();
  cudaSetDevice(device_);
  if (staging_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaFree(staging_);
    staging_ = nullptr;
    staging_bytes_ = 0;
  }
  const size_t want = std::max(bytes, size_t{1} << 20);
  if (cudaMalloc(&staging_, want) != cudaSuccess) {
    cudaGetLastError();
    staging_ = nullptr;
    return absl::ResourceExhaustedError(
        absl::StrCat("NCCL transport: no GPU memory for a ", want, "-byte staging buffer"));
  }
  staging_bytes_ = want;
  return absl::OkStatus();
}

absl::Status NcclDevice::EnsurePointers(size_t n) {
  if (n <= ptr_capacity_) return absl::OkStatus();
  cudaStreamSynchronize(stream_);
  if (host_ptrs_ != nullptr) cudaFreeHost(host_ptrs_);
  if (dev_ptrs_ != nullptr) cudaFree(dev_ptrs_);
  host_ptrs_ = nullptr;
  dev_ptrs_ = nullptr;
  ptr_capacity_ = 0;
  const size_t cap = std::max<size_t>(n, 1024);
  if (absl::Status s = CudaError(cudaMallocHost(&host_ptrs_, cap * sizeof(void*)), "pinned memory");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaError(cudaMalloc(&dev_ptrs_, cap * sizeof(void*)), "GPU memory");
      !s.ok()) {
    return s;
  }
  ptr_capacity_ = cap;
  return absl::OkStatus();
}

absl::Status NcclDevice::Pack(absl::Span<const ConstBlockView> views, size_t total,
                              cudaEvent_t wait_for) {
  if (absl::Status s = EnsureStaging(total); !s.ok()) return s;
  if (wait_for != nullptr) {
    if (absl::Status s = CudaError(cudaStreamWaitEvent(stream_, wait_for, 0),
                                   "waiting for the layer's KV store");
        !s.ok()) {
      return s;
    }
  }
  bool uniform = true;
  for (const ConstBlockView& v : views) uniform &= v.bytes == views[0].bytes;
  if (uniform && !views.empty() && views[0].bytes > 0) {
    if (absl::Status s = EnsurePointers(views.size()); !s.ok()) return s;
    for (size_t i = 0; i < views.size(); ++i) host_ptrs_[i] = const_cast<void*>(views[i].data);
    cudaError_t e = cudaMemcpyAsync(dev_ptrs_, host_ptrs_, views.size() * sizeof(void*),
                                    cudaMemcpyHostToDevice, stream_);
    if (e == cudaSuccess) {
      e = kernels::cuda::GatherBlocks(staging_, dev_ptrs_, static_cast<int64_t>(views[0].bytes),
                                      static_cast<int64_t>(views.size()), stream_);
    }
    return CudaError(e, "packing KV blocks");
  }
  size_t at = 0;
  for (const ConstBlockView& v : views) {
    if (v.bytes == 0) continue;
    if (absl::Status s = CudaError(cudaMemcpyAsync(static_cast<char*>(staging_) + at, v.data,
                                                   v.bytes, cudaMemcpyDeviceToDevice, stream_),
                                   "packing KV blocks");
        !s.ok()) {
      return s;
    }
    at += v.bytes;
  }
  return absl::OkStatus();
}

absl::Status NcclDevice::Unpack(const std::vector<BlockView>& views) {
  bool uniform = true;
  for (const BlockView& v : views) uniform &= v.bytes == views[0].bytes;
  if (uniform && !views.empty() && views[0].bytes > 0) {
    if (absl::Status s = EnsurePointers(views.size()); !s.ok()) return s;
    for (size_t i = 0; i < views.size(); ++i) host_ptrs_[i] = views[i].data;
    cudaError_t e = cudaMemcpyAsync(dev_ptrs_, host_ptrs_, views.size() * sizeof(void*),
                                    cudaMemcpyHostToDevice, stream_);
    if (e == cudaSuccess) {
      e = kernels::cuda::ScatterBlocks(dev_ptrs_, staging_, static_cast<int64_t>(views[0].bytes),
                                       static_cast<int64_t>(views.size()), stream_);
    }
    return CudaError(e, "unpacking KV blocks");
  }
  size_t at = 0;
  for (const BlockView& v : views) {
    if (v.bytes == 0) continue;
    if (absl::Status s = CudaError(cudaMemcpyAsync(v.data, static_cast<char*>(staging_) + at,
                                                   v.bytes, cudaMemcpyDeviceToDevice, stream_),
                                   "unpacking KV blocks");
        !s.ok()) {
      return s;
    }
    at += v.bytes;
  }
  return absl::OkStatus();
}

absl::Status NcclDevice::PointToPoint(bool send, size_t bytes, int peer) {
  const char* what = send ? "send" : "recv";
  ncclResult_t r;
  {
    std::unique_lock<std::mutex> lock(comm_mu_);
    if (comm_ == nullptr || aborted()) {
      return absl::UnavailableError(absl::StrCat("NCCL ", what, ": link aborted"));
    }
    ncclComm_t comm = comm_;
#ifdef PDS_CUDA_EMU
    // Emulated calls block until the peer posts its side: without the lock,
    // or Abort could never get in. (Real ones return at once.)
    lock.unlock();
#endif
    r = send ? ncclSend(staging_, bytes, ncclUint8, peer, comm, stream_)
             : ncclRecv(staging_, bytes, ncclUint8, peer, comm, stream_);
  }
  if (r == ncclInProgress) return WaitComm(what);
  return NcclStatus(r, what);
}

absl::Status NcclDevice::Send(size_t bytes, int peer) {
  if (bytes == 0) return absl::OkStatus();
  return PointToPoint(true, bytes, peer);
}

absl::Status NcclDevice::Recv(size_t bytes, int peer) {
  if (absl::Status s = EnsureStaging(bytes); !s.ok()) return s;
  if (bytes == 0) return absl::OkStatus();
  return PointToPoint(false, bytes, peer);
}

absl::Status NcclDevice::Sync() {
  if (absl::Status s = CudaError(cudaEventRecord(done_, stream_), "recording an event"); !s.ok()) {
    return s;
  }
  for (int round = 0;; ++round) {
    const cudaError_t e = cudaEventQuery(done_);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) return CudaError(e, "waiting for the stream");
    if (aborted()) {
      // NCCL's abort ends its kernels; the copies before them finish anyway.
      cudaEventSynchronize(done_);
      return absl::UnavailableError("NCCL transport: link aborted");
    }
    ncclResult_t state = ncclSuccess;
    if (AsyncError(&state) == ncclSuccess && state != ncclSuccess && state != ncclInProgress) {
      return NcclStatus(state, "transfer");
    }
    Pause(round);
  }
  return aborted() ? absl::UnavailableError("NCCL transport: link aborted") : absl::OkStatus();
}

}  // namespace pdserve::transport::internal
