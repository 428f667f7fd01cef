#include "transport/host_staged.h"

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_compat.h"

namespace pdserve::transport {
namespace internal {

absl::Status StagedCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat("host-staged KV: ", what, ": ", cudaGetErrorString(e)));
}

// Pinned host buffers by power-of-two size, reused across transfers
// (cudaMallocHost costs milliseconds).
class PinnedPool : public std::enable_shared_from_this<PinnedPool> {
 public:
  explicit PinnedPool(size_t max_cached) : max_cached_(max_cached) {}
  ~PinnedPool() {
    for (auto& [size, list] : free_) {
      for (void* p : list) cudaFreeHost(p);
    }
  }

  struct Chunk {
    std::shared_ptr<PinnedPool> pool;
    char* data = nullptr;  // (capacity) pinned host memory
    size_t capacity = 0;
    Chunk() = default;
    Chunk(const Chunk&) = delete;
    Chunk& operator=(const Chunk&) = delete;
    ~Chunk() {
      if (data != nullptr) pool->Release(data, capacity);
    }
  };

  absl::StatusOr<std::unique_ptr<Chunk>> Acquire(size_t bytes) {
    size_t cap = 4096;
    while (cap < bytes) cap <<= 1;
    auto c = std::make_unique<Chunk>();
    c->pool = shared_from_this();
    c->capacity = cap;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& list = free_[cap];
      if (!list.empty()) {
        c->data = static_cast<char*>(list.back());
        list.pop_back();
        cached_ -= cap;
        return c;
      }
    }
    void* p = nullptr;
    if (absl::Status s = StagedCuda(cudaMallocHost(&p, cap), "cudaMallocHost"); !s.ok()) return s;
    c->data = static_cast<char*>(p);
    return c;
  }

 private:
  void Release(void* p, size_t cap) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + cap <= max_cached_) {
        free_[cap].push_back(p);
        cached_ += cap;
        return;
      }
    }
    cudaFreeHost(p);
  }

  const size_t max_cached_;
  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

using Chunk = PinnedPool::Chunk;

// One staged outgoing transfer.
struct StagedXfer {
  std::unique_ptr<KvSendHandle> inner;
  std::mutex mu;
  std::condition_variable cv;
  int pending = 0;  // staging jobs not yet through their copy
  std::optional<absl::Status> inner_status;
  SendDoneCallback on_done;
  bool done = false;
  std::vector<std::unique_ptr<Chunk>> chunks;  // freed with the transfer
};

struct StageJob {
  std::shared_ptr<StagedXfer> t;
  int32_t layer = -1;  // -1: Finish
  cudaEvent_t copied = nullptr;
  std::vector<ConstBlockView> host;  // inside one of t's chunks
  std::string trailer;
};

class StagedSender final : public KvSender {
 public:
  StagedSender(std::unique_ptr<KvSender> inner, HostStagedOptions options)
      : inner_(std::move(inner)),
        options_(options),
        pool_(std::make_shared<PinnedPool>(options.max_cached_bytes)) {}

  absl::Status Start() {
    if (absl::Status s = StagedCuda(cudaSetDevice(options_.device), "cudaSetDevice"); !s.ok()) {
      return s;
    }
    if (absl::Status s = StagedCuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                    "cudaStreamCreate");
        !s.ok()) {
      return s;
    }
    thread_ = std::thread([this] { Loop(); });
    return absl::OkStatus();
  }

  ~StagedSender() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::StatusOr<std::unique_ptr<KvSendHandle>> StartTransfer(TransferId xfer_id,
                                                              const TransferSecret& secret,
                                                              const std::string& peer,
                                                              int32_t n_layers, Deadline deadline,
                                                              SendDoneCallback on_done) override;

  KvTransportStats stats() const override { return inner_->stats(); }

  // Queues the D2H copies of views behind ready_event and the job that
  // hands them to the inner sender.
  absl::Status StageLayer(const std::shared_ptr<StagedXfer>& t, int32_t layer,
                          absl::Span<const ConstBlockView> views, cudaEvent_t ready_event) {
    const size_t total = TotalBytes(views);
    absl::StatusOr<std::unique_ptr<Chunk>> chunk = pool_->Acquire(std::max<size_t>(total, 1));
    if (!chunk.ok()) return chunk.status();
    StageJob job;
    job.t = t;
    job.layer = layer;
    std::lock_guard<std::mutex> copy_lock(copy_mu_);  // one thread enqueues on stream_ at a time
    absl::Status s;
    if (ready_event != nullptr) {
      s = StagedCuda(cudaStreamWaitEvent(stream_, ready_event, 0), "cudaStreamWaitEvent");
    }
    size_t offset = 0;
    for (size_t i = 0; s.ok() && i < views.size(); ++i) {
      s = StagedCuda(cudaMemcpyAsync((*chunk)->data + offset, views[i].data, views[i].bytes,
                                     cudaMemcpyDeviceToHost, stream_),
                     "cudaMemcpyAsync");
      job.host.push_back({(*chunk)->data + offset, views[i].bytes});
      offset += views[i].bytes;
    }
    if (s.ok()) {
      s = StagedCuda(cudaEventCreateWithFlags(&job.copied, cudaEventDisableTiming),
                     "cudaEventCreate");
    }
    if (s.ok()) s = StagedCuda(cudaEventRecord(job.copied, stream_), "cudaEventRecord");
    if (!s.ok()) {
      // Copies already queued read the views: let them finish first.
      cudaStreamSynchronize(stream_);
      if (job.copied != nullptr) cudaEventDestroy(job.copied);
      return s;
    }
    {
      std::lock_guard<std::mutex> lock(t->mu);
      t->chunks.push_back(std::move(*chunk));
      ++t->pending;
    }
    Push(std::move(job));
    return absl::OkStatus();
  }

  void StageFinish(const std::shared_ptr<StagedXfer>& t, std::string trailer) {
    StageJob job;
    job.t = t;
    job.trailer = std::move(trailer);
    {
      std::lock_guard<std::mutex> lock(t->mu);
      ++t->pending;
    }
    Push(std::move(job));
  }

  // Runs the user's on_done once the inner transfer ended and no staged
  // copy reads the device views any more.
  static void MaybeDone(const std::shared_ptr<StagedXfer>& t) {
    SendDoneCallback cb;
    absl::Status status;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->done || !t->inner_status || t->pending > 0) return;
      t->done = true;
      status = *t->inner_status;
      cb = std::move(t->on_done);
    }
    t->cv.notify_all();
    if (cb) cb(status);
  }

 private:
  void Push(StageJob job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_all();
  }

  void Loop() {
    cudaSetDevice(options_.device);
    for (;;) {
      StageJob job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !jobs_.empty() || stopping_; });
        if (jobs_.empty()) return;  // stopping, and every job ran
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      absl::Status s;
      if (job.copied != nullptr) {
        s = StagedCuda(cudaEventSynchronize(job.copied), "cudaEventSynchronize");
        cudaEventDestroy(job.copied);
      }
      if (job.layer >= 0) {
        if (s.ok()) s = job.t->inner->SendLayer(job.layer, job.host);
      } else if (s.ok()) {
        s = job.t->inner->Finish(std::move(job.trailer));
      }
      if (!s.ok()) {
        {
          std::lock_guard<std::mutex> lock(job.t->mu);
          if (!job.t->inner_status) job.t->inner_status = s;
        }
        job.t->inner->Abort();
      }
      {
        std::lock_guard<std::mutex> lock(job.t->mu);
        --job.t->pending;
      }
      MaybeDone(job.t);
    }
  }

  std::unique_ptr<KvSender> inner_;
  const HostStagedOptions options_;
  std::shared_ptr<PinnedPool> pool_;
  std::mutex copy_mu_;
  cudaStream_t stream_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StageJob> jobs_;
  bool stopping_ = false;
  std::thread thread_;
};

class StagedSendHandle final : public DeviceKvSendHandle {
 public:
  StagedSendHandle(StagedSender* sender, std::shared_ptr<StagedXfer> t)
      : sender_(sender), t_(std::move(t)) {}
  ~StagedSendHandle() override { Abort(); }

  absl::Status SendLayer(int32_t layer, absl::Span<const ConstBlockView> blocks) override {
    return SendLayerAfter(layer, blocks, nullptr);
  }
  absl::Status SendLayerAfter(int32_t layer, absl::Span<const ConstBlockView> blocks,
                              void* ready_event) override {
    {
      std::lock_guard<std::mutex> lock(t_->mu);
      if (t_->inner_status && !t_->inner_status->ok()) return *t_->inner_status;
    }
    return sender_->StageLayer(t_, layer, blocks, static_cast<cudaEvent_t>(ready_event));
  }
  absl::Status Finish(std::string trailer) override {
    sender_->StageFinish(t_, std::move(trailer));
    return absl::OkStatus();
  }
  absl::Status Wait() override {
    std::unique_lock<std::mutex> lock(t_->mu);
    t_->cv.wait(lock, [&] { return t_->done; });
    return *t_->inner_status;
  }
  std::optional<absl::Status> Poll() override {
    std::lock_guard<std::mutex> lock(t_->mu);
    if (!t_->done) return std::nullopt;
    return *t_->inner_status;
  }
  void Abort() override {
    t_->inner->Abort();
    Wait().IgnoreError();
  }

 private:
  StagedSender* sender_;
  std::shared_ptr<StagedXfer> t_;
};

absl::StatusOr<std::unique_ptr<KvSendHandle>> StagedSender::StartTransfer(
    TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
    Deadline deadline, SendDoneCallback on_done) {
  auto t = std::make_shared<StagedXfer>();
  t->on_done = std::move(on_done);
  std::weak_ptr<StagedXfer> weak = t;
  absl::StatusOr<std::unique_ptr<KvSendHandle>> inner =
      inner_->StartTransfer(xfer_id, secret, peer, n_layers, deadline, [weak](absl::Status s) {
        std::shared_ptr<StagedXfer> x = weak.lock();
        if (!x) return;
        {
          std::lock_guard<std::mutex> lock(x->mu);
          if (!x->inner_status) x->inner_status = std::move(s);
        }
        MaybeDone(x);
      });
  if (!inner.ok()) return inner.status();
  t->inner = std::move(*inner);
  return std::unique_ptr<KvSendHandle>(new StagedSendHandle(this, std::move(t)));
}

class StagedReceiver final : public KvReceiver {
 public:
  StagedReceiver(std::unique_ptr<KvReceiver> inner, HostStagedOptions options)
      : inner_(std::move(inner)),
        options_(options),
        pool_(std::make_shared<PinnedPool>(options.max_cached_bytes)) {}

  absl::Status Start() {
    if (absl::Status s = StagedCuda(cudaSetDevice(options_.device), "cudaSetDevice"); !s.ok()) {
      return s;
    }
    return StagedCuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                      "cudaStreamCreate");
  }
  ~StagedReceiver() override {
    inner_.reset();  // fails live Posts: their completions run now
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string endpoint() const override { return inner_->endpoint(); }

  absl::Status Post(TransferId xfer_id, const TransferSecret& secret,
                    std::vector<std::vector<BlockView>> layers, Deadline deadline,
                    ReceiveDoneCallback on_done) override {
    size_t total = 0;
    for (const auto& l : layers) total += TotalBytes(l);
    absl::StatusOr<std::unique_ptr<Chunk>> chunk = pool_->Acquire(std::max<size_t>(total, 1));
    if (!chunk.ok()) return chunk.status();
    std::vector<std::vector<BlockView>> host(layers.size());
    size_t offset = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      for (const BlockView& v : layers[l]) {
        host[l].push_back({(*chunk)->data + offset, v.bytes});
        offset += v.bytes;
      }
    }
    std::shared_ptr<Chunk> staged(std::move(*chunk));
    return inner_->Post(xfer_id, secret, std::move(host), deadline,
                        [this, staged, device = std::move(layers), cb = std::move(on_done)](
                            absl::Status s, std::string trailer, ReceiveTiming timing) mutable {
                          if (s.ok()) s = CopyIn(staged->data, device);
                          if (!s.ok()) trailer.clear();
                          cb(std::move(s), std::move(trailer), timing);
                        });
  }

  absl::Status Cancel(TransferId xfer_id) override { return inner_->Cancel(xfer_id); }
  KvTransportStats stats() const override { return inner_->stats(); }

 private:
  // The landed transfer from pinned memory into the device blocks.
  absl::Status CopyIn(const char* host, const std::vector<std::vector<BlockView>>& device) {
    std::lock_guard<std::mutex> lock(copy_mu_);
    cudaSetDevice(options_.device);
    size_t offset = 0;
    absl::Status s;
    for (const auto& layer : device) {
      for (const BlockView& v : layer) {
        if (s.ok()) {
          s = StagedCuda(
              cudaMemcpyAsync(v.data, host + offset, v.bytes, cudaMemcpyHostToDevice, stream_),
              "cudaMemcpyAsync");
        }
        offset += v.bytes;
      }
    }
    const absl::Status synced = StagedCuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return s.ok() ? synced : s;
  }

  std::unique_ptr<KvReceiver> inner_;
  const HostStagedOptions options_;
  std::shared_ptr<PinnedPool> pool_;
  std::mutex copy_mu_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace internal

absl::StatusOr<std::unique_ptr<KvSender>> MakeHostStagedSender(std::unique_ptr<KvSender> inner,
                                                               HostStagedOptions options) {
  auto s = std::make_unique<internal::StagedSender>(std::move(inner), options);
  if (absl::Status st = s->Start(); !st.ok()) return st;
  return std::unique_ptr<KvSender>(std::move(s));
}

absl::StatusOr<std::unique_ptr<KvReceiver>> MakeHostStagedReceiver(
    std::unique_ptr<KvReceiver> inner, HostStagedOptions options) {
  auto r = std::make_unique<internal::StagedReceiver>(std::move(inner), options);
  if (absl::Status st = r->Start(); !st.ok()) return st;
  return std::unique_ptr<KvReceiver>(std::move(r));
}

}  // namespace pdserve::transport
