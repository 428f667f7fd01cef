#include "transport/ipc_sender.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "kernels/cuda/cuda_compat.h"
#include "transport/control_link.h"
#include "transport/nccl_wire.h"
#include "transport/tcp_socket.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {

using internal::MakeBeginFrame;
using internal::NcclFrame;
using internal::NcclFrameType;

namespace internal {

std::string HostIdentity() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (in && std::getline(in, id) && !id.empty()) return absl::StrCat("boot:", id);
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  return absl::StrCat("host:", host);
}

const std::string& ProcessNonce() {
  static const std::string* nonce = new std::string(TransferSecret::Random().bytes());
  return *nonce;
}

}  // namespace internal

namespace internal {

absl::Status IpcCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// The start and size of the cudaMalloc allocation holding p: the driver's
// cuMemGetAddressRange, looked up through the runtime so that the module
// links no libcuda (the emulation answers from its allocation table).
absl::Status AllocationRange(const void* p, uintptr_t* start, size_t* bytes) {
  using GetRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  static const GetRange get_range = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<GetRange>(nullptr);
    }
    return reinterpret_cast<GetRange>(fn);
  }();
  if (get_range == nullptr) {
    return absl::InternalError("the CUDA driver has no cuMemGetAddressRange");
  }
  CUdeviceptr base = 0;
  size_t size = 0;
  if (get_range(&base, &size, reinterpret_cast<CUdeviceptr>(p)) != CUDA_SUCCESS) {
    return absl::InvalidArgumentError("the region is not device memory from cudaMalloc");
  }
  *start = static_cast<uintptr_t>(base);
  *bytes = size;
  return absl::OkStatus();
}

struct Region {
  uintptr_t base = 0;
  size_t bytes = 0;
  cudaIpcMemHandle_t handle;
};

struct IpcSendLink;

// One outgoing transfer (ready: the receiver may be told where the data is;
// done: the receiver no longer reads the views). Fields below
// SendXferBase::mu are guarded by it.
struct IpcSendXfer final : SendXferBase {
  std::shared_ptr<IpcSendLink> link;
  bool receiver_reads = false;  // a Layer frame went out, no final word from the receiver yet
  Deadline decided_at;
};

struct IpcSendJob {
  std::shared_ptr<IpcSendXfer> t;
  int32_t layer = -1;   // -1: the trailer
  std::string entries;  // the Layer payload, computed when enqueued
  uint64_t bytes = 0;
  void* event = nullptr;
  std::string trailer;
};

// One receiver endpoint (`peer`).
struct IpcSendLink final : ControlLink {
  // Guarded by mu:
  std::deque<IpcSendJob> jobs;
  std::map<uint64_t, std::shared_ptr<IpcSendXfer>> xfers;

  bool handles_sent = false;      // link thread only
  cudaStream_t stream = nullptr;  // link thread only
  cudaEvent_t event = nullptr;    // interprocess: the receiver waits on it
};

}  // namespace internal

using internal::IpcCuda;
using internal::IpcSendJob;
using internal::IpcSendLink;
using internal::IpcSendXfer;
using internal::Region;
using internal::XferName;

class IpcKvSender::Core {
 public:
  explicit Core(IpcSenderOptions options) : options_(options), host_id_(internal::HostIdentity()) {}

  void Start() {
    links_.Start([](const std::shared_ptr<IpcSendLink>& l) { Join(l); },
                 [this](const std::shared_ptr<IpcSendLink>& l) { CheckLink(l); });
  }

  void Stop() {
    const std::vector<std::shared_ptr<IpcSendLink>> links = links_.Stop();
    for (auto& l : links) Kill(l, absl::CancelledError("IPC sender shut down"));
    for (auto& l : links) Join(l);
  }

  internal::TransferCounters& counters() { return counters_; }

  absl::Status RegisterRegion(const void* base, size_t bytes) {
    if (base == nullptr || bytes == 0) return absl::InvalidArgumentError("empty region");
    Region r;
    r.base = reinterpret_cast<uintptr_t>(base);
    r.bytes = bytes;
    if (absl::Status s = IpcCuda(cudaSetDevice(options_.device), "cudaSetDevice"); !s.ok())
      return s;
    // A handle exports the whole allocation and the receiver maps its start,
    // so a region must be one allocation's start (the real runtime accepts a
    // pointer inside one, and the receiver would then read the wrong bytes).
    uintptr_t alloc = 0;
    size_t alloc_bytes = 0;
    if (absl::Status s = internal::AllocationRange(base, &alloc, &alloc_bytes); !s.ok()) return s;
    if (alloc != r.base) {
      return absl::InvalidArgumentError(
          absl::StrCat("IPC sender: the region starts ", r.base - alloc,
                       " bytes into a cudaMalloc allocation; it must start one"));
    }
    if (bytes > alloc_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("IPC sender: the region (", bytes,
                                                     " bytes) runs past its allocation (",
                                                     alloc_bytes, " bytes)"));
    }
    if (absl::Status s =
            IpcCuda(cudaIpcGetMemHandle(&r.handle, const_cast<void*>(base)),
                    "cudaIpcGetMemHandle (the region must start a cudaMalloc allocation)");
        !s.ok()) {
      return s;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!links_.Empty()) {
      return absl::FailedPreconditionError("IPC sender: register regions before any transfer");
    }
    if (static_cast<int>(regions_.size()) >= internal::kIpcMaxRegions) {
      return absl::ResourceExhaustedError("IPC sender: too many regions");
    }
    for (const Region& o : regions_) {
      if (r.base < o.base + o.bytes && o.base < r.base + r.bytes) {
        return absl::InvalidArgumentError("IPC sender: regions overlap");
      }
    }
    regions_.push_back(r);
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<IpcSendXfer>> Open(TransferId xfer, const TransferSecret& secret,
                                                    const std::string& peer, int32_t n_layers,
                                                    Deadline deadline, SendDoneCallback on_done) {
    if (n_layers < 1) return absl::InvalidArgumentError("n_layers must be >= 1");
    if (!absl::StartsWith(peer, kIpcScheme)) {
      return absl::InvalidArgumentError(
          absl::StrCat("IPC sender: endpoint '", peer, "' does not start with ipc:"));
    }
    absl::StatusOr<std::shared_ptr<IpcSendLink>> link = GetLink(peer);
    if (!link.ok()) return link.status();
    auto t = std::make_shared<IpcSendXfer>();
    t->Init(xfer, secret, n_layers, deadline, std::move(on_done));
    t->link = *link;
    {
      std::lock_guard<std::mutex> lock((*link)->mu);
      if (!(*link)->xfers.emplace(xfer.value, t).second) {
        return absl::AlreadyExistsError(
            absl::StrCat(XferName(xfer), " is already in flight to ", peer));
      }
    }
    const NcclFrame begin = MakeBeginFrame(secret, xfer, n_layers, deadline);
    if (absl::Status s = Write(*link, begin); !s.ok()) {
      {
        std::lock_guard<std::mutex> lock((*link)->mu);
        (*link)->xfers.erase(xfer.value);
      }
      Kill(*link, s);
      return absl::UnavailableError(absl::StrCat("IPC sender: ", peer, ": ", s.message()));
    }
    counters_.Started();
    return t;
  }

  // The Layer payload for views: each must lie in a registered region.
  absl::Status Describe(absl::Span<const ConstBlockView> views, IpcSendJob* job) {
    job->entries.resize(views.size() * internal::kIpcBlockEntryBytes);
    uint64_t total = 0;
    for (size_t i = 0; i < views.size(); ++i) {
      const uintptr_t a = reinterpret_cast<uintptr_t>(views[i].data);
      int region = -1;
      for (size_t r = 0; r < regions_.size(); ++r) {
        const Region& g = regions_[r];
        if (a >= g.base && views[i].bytes <= g.bytes && a - g.base <= g.bytes - views[i].bytes) {
          region = static_cast<int>(r);
          break;
        }
      }
      if (region < 0) {
        return absl::InvalidArgumentError(absl::StrCat("IPC sender: block ", i, " of layer ",
                                                       job->layer,
                                                       " lies outside every registered region"));
      }
      char* e = &job->entries[i * internal::kIpcBlockEntryBytes];
      const uint32_t reg = static_cast<uint32_t>(region), pad = 0;
      const uint64_t offset = a - regions_[region].base, bytes = views[i].bytes;
      std::memcpy(e, &reg, 4);
      std::memcpy(e + 4, &pad, 4);
      std::memcpy(e + 8, &offset, 8);
      std::memcpy(e + 16, &bytes, 8);
      total += bytes;
    }
    job->bytes = total;
    return absl::OkStatus();
  }

  // For ControlSendHandle.
  absl::Status EnqueueLayer(const std::shared_ptr<IpcSendXfer>& t, int32_t layer,
                            absl::Span<const ConstBlockView> blocks, void* ready_event) {
    IpcSendJob job;
    job.layer = layer;
    job.event = ready_event;
    if (absl::Status s = Describe(blocks, &job); !s.ok()) return s;
    return Enqueue(t, std::move(job));
  }
  absl::Status EnqueueTrailer(const std::shared_ptr<IpcSendXfer>& t, std::string trailer) {
    IpcSendJob job;
    job.layer = -1;
    job.trailer = std::move(trailer);
    return Enqueue(t, std::move(job));
  }

  absl::Status Enqueue(const std::shared_ptr<IpcSendXfer>& t, IpcSendJob job) {
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (absl::Status s = t->GiveLocked(job.layer); !s.ok()) return s;
    }
    job.t = t;
    IpcSendLink& l = *t->link;
    {
      std::lock_guard<std::mutex> lock(l.mu);
      l.jobs.push_back(std::move(job));
    }
    l.cv.notify_all();
    return absl::OkStatus();
  }

  // Decides t's outcome once. It completes at once unless the receiver may
  // still read this node's blocks; then at its final word (or link death).
  void Complete(const std::shared_ptr<IpcSendXfer>& t, absl::Status status, bool notify_peer) {
    bool finalize_now = false;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->final_status) return;
      t->final_status = std::move(status);
      t->decided_at = MonoClock::now();
      finalize_now = !t->receiver_reads || t->link->dead;
    }
    t->link->cv.notify_all();
    if (notify_peer && !t->link->dead) SendAbort(t);
    if (finalize_now) Finalize(t);
  }

  // The receiver said it no longer reads t's blocks (Ack, Nack, Released).
  void ReceiverDone(const std::shared_ptr<IpcSendXfer>& t) {
    bool finalize = false;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      t->receiver_reads = false;
      finalize = t->final_status.has_value();
    }
    if (finalize) Finalize(t);
  }

  void Kill(const std::shared_ptr<IpcSendLink>& l, const absl::Status& why) {
    if (!l->Close()) return;
    std::vector<std::shared_ptr<IpcSendXfer>> ts;
    std::deque<IpcSendJob> dropped;  // jobs hold their transfers, which hold the link
    {
      std::lock_guard<std::mutex> lock(l->mu);
      for (auto& [x, t] : l->xfers) ts.push_back(t);
      dropped.swap(l->jobs);
    }
    if (!ts.empty()) {
      PDS_LOG(WARNING) << "IPC sender: link to " << l->peer << " failed with " << ts.size()
                       << " transfers in flight: " << why;
    }
    for (auto& t : ts) {
      Complete(t,
               absl::Status(why.code() == absl::StatusCode::kCancelled ||
                                    why.code() == absl::StatusCode::kFailedPrecondition
                                ? why.code()
                                : absl::StatusCode::kUnavailable,
                            absl::StrCat(XferName(t->xfer), " to ", l->peer, ": ", why.message())),
               false);
      Finalize(t);  // decided earlier and waiting for the receiver: it is gone
    }
    links_.Retire(l);
  }

 private:
  static absl::Status Write(const std::shared_ptr<IpcSendLink>& l, const NcclFrame& f) {
    return l->Write(f);
  }

  void SendAbort(const std::shared_ptr<IpcSendXfer>& t) {
    NcclFrame f;
    f.type = NcclFrameType::kAbort;
    f.xfer = t->xfer.value;
    // Under t->mu: a Layer frame the link thread writes for t (also under
    // t->mu) never follows the Abort.
    absl::Status s;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->final_status) f.arg0 = static_cast<int64_t>(t->final_status->code());
      s = Write(t->link, f);
    }
    if (!s.ok() && !t->link->dead) Kill(t->link, s);
  }

  void Finalize(const std::shared_ptr<IpcSendXfer>& t) {
    SendDoneCallback cb;
    absl::Status status;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->done || !t->final_status) return;
      t->done = true;
      status = *t->final_status;
      cb = std::move(t->on_done);
    }
    {
      std::lock_guard<std::mutex> lock(t->link->mu);
      auto it = t->link->xfers.find(t->xfer.value);
      if (it != t->link->xfers.end() && it->second == t) t->link->xfers.erase(it);
    }
    counters_.Finished(status, MonoNowNs() - t->start_ns);
    t->cv.notify_all();
    if (cb) cb(status);
  }

  absl::StatusOr<std::shared_ptr<IpcSendLink>> GetLink(const std::string& endpoint) {
    std::lock_guard<std::mutex> create_lock(links_.create_mu());
    absl::StatusOr<std::shared_ptr<IpcSendLink>> found = links_.Find(endpoint, "IPC sender");
    if (!found.ok() || *found) return found;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (regions_.empty()) {
        return absl::FailedPreconditionError("IPC sender: no KV region registered");
      }
    }
    absl::StatusOr<internal::UniqueFd> fd =
        internal::ConnectControl(endpoint, kIpcScheme, options_.connect_timeout_ms, "IPC sender");
    if (!fd.ok()) return fd.status();
    auto l = std::make_shared<IpcSendLink>();
    l->peer = endpoint;
    l->fd = std::move(*fd);
    if (absl::Status s = IpcCuda(cudaSetDevice(options_.device), "cudaSetDevice"); !s.ok())
      return s;
    if (absl::Status s = IpcCuda(cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking),
                                 "cudaStreamCreate");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = IpcCuda(
            cudaEventCreateWithFlags(&l->event, cudaEventDisableTiming | cudaEventInterprocess),
            "cudaEventCreate (interprocess)");
        !s.ok()) {
      cudaStreamDestroy(l->stream);
      l->stream = nullptr;
      return s;
    }
    NcclFrame hello;
    hello.type = NcclFrameType::kHello;
    hello.payload = internal::ProcessNonce() + host_id_;
    if (absl::Status s = internal::WriteNcclFrame(l->fd.get(), hello); !s.ok()) {
      Destroy(*l);
      return absl::UnavailableError(absl::StrCat("IPC sender: ", endpoint, ": ", s.message()));
    }
    internal::StartLinkThreads(
        l, [this](const std::shared_ptr<IpcSendLink>& link) { ReadLoop(link); },
        [this](const std::shared_ptr<IpcSendLink>& link) { WorkLoop(link); });
    links_.Add(l);
    return l;
  }

  void ReadLoop(const std::shared_ptr<IpcSendLink>& l) {
    for (;;) {
      NcclFrame f;
      absl::Status s = internal::ReadNcclFrame(l->fd.get(), &f, 64 << 10);
      if (!s.ok()) return Kill(l, s);
      if (f.xfer == 0 && f.type == NcclFrameType::kNack) {
        // The receiver refused the link itself (another host, ...).
        return Kill(l, absl::Status(static_cast<absl::StatusCode>(std::clamp<int64_t>(
                                        f.arg0, 1, KvTransportStats::kNumCodes - 1)),
                                    absl::StrCat("receiver ", l->peer, ": ", f.payload)));
      }
      std::shared_ptr<IpcSendXfer> t;
      {
        std::lock_guard<std::mutex> lock(l->mu);
        auto it = l->xfers.find(f.xfer);
        if (it != l->xfers.end()) t = it->second;
      }
      if (!t) continue;  // already finished here
      switch (f.type) {
        case NcclFrameType::kReady: {
          {
            std::lock_guard<std::mutex> lock(t->mu);
            t->ready = true;
          }
          l->cv.notify_all();
          break;
        }
        case NcclFrameType::kAck: {
          bool sent_all;
          {
            std::lock_guard<std::mutex> lock(t->mu);
            sent_all = t->trailer_sent;
          }
          if (!sent_all) {
            return Kill(
                l, absl::InternalError(absl::StrCat("receiver ", l->peer, " acknowledged ",
                                                    XferName(t->xfer), " before it was sent")));
          }
          Complete(t, absl::OkStatus(), false);
          ReceiverDone(t);
          break;
        }
        case NcclFrameType::kNack: {
          const int64_t code = std::clamp<int64_t>(f.arg0, 1, KvTransportStats::kNumCodes - 1);
          Complete(t,
                   absl::Status(static_cast<absl::StatusCode>(code),
                                absl::StrCat("receiver ", l->peer, ": ", f.payload)),
                   false);
          ReceiverDone(t);
          break;
        }
        case NcclFrameType::kReleased:
          ReceiverDone(t);
          break;
        default:
          return Kill(l,
                      absl::InvalidArgumentError("unexpected IPC control frame from a receiver"));
      }
    }
  }

  // The first job, in order, that can go now: its transfer is Ready, or
  // already decided (the job is then dropped).
  bool TakeJobLocked(IpcSendLink& l, IpcSendJob* out) {
    for (auto it = l.jobs.begin(); it != l.jobs.end(); ++it) {
      std::lock_guard<std::mutex> lock(it->t->mu);
      if (!it->t->final_status && !it->t->ready) continue;
      *out = std::move(*it);
      l.jobs.erase(it);
      return true;
    }
    return false;
  }

  static void AppendPointer(const void* p, std::string* out) {
    const uint64_t v = reinterpret_cast<uint64_t>(p);
    out->append(reinterpret_cast<const char*>(&v), sizeof(v));
  }

  // The regions' and the event's handles, once per link, after a Ready.
  absl::Status SendHandles(const std::shared_ptr<IpcSendLink>& l) {
    if (l->handles_sent) return absl::OkStatus();
    cudaIpcEventHandle_t eh;
    if (absl::Status s = IpcCuda(cudaIpcGetEventHandle(&eh, l->event), "cudaIpcGetEventHandle");
        !s.ok()) {
      return s;
    }
    NcclFrame f;
    f.type = NcclFrameType::kHandle;
    f.arg0 = -1;
    f.payload.assign(reinterpret_cast<const char*>(&eh), sizeof(eh));
    AppendPointer(l->event, &f.payload);
    if (absl::Status s = Write(l, f); !s.ok()) return s;
    std::vector<Region> regions;
    {
      std::lock_guard<std::mutex> lock(mu_);
      regions = regions_;
    }
    for (size_t r = 0; r < regions.size(); ++r) {
      f.arg0 = static_cast<int64_t>(r);
      f.arg1 = static_cast<int64_t>(regions[r].bytes);
      f.payload.assign(reinterpret_cast<const char*>(&regions[r].handle),
                       sizeof(regions[r].handle));
      AppendPointer(reinterpret_cast<const void*>(regions[r].base), &f.payload);
      if (absl::Status s = Write(l, f); !s.ok()) return s;
    }
    l->handles_sent = true;
    return absl::OkStatus();
  }

  void WorkLoop(const std::shared_ptr<IpcSendLink>& l) {
    absl::Status s = IpcCuda(cudaSetDevice(options_.device), "cudaSetDevice");
    if (!s.ok()) return Kill(l, s);
    for (;;) {
      IpcSendJob job;
      {
        std::unique_lock<std::mutex> lock(l->mu);
        l->cv.wait(lock, [&] { return l->closing || TakeJobLocked(*l, &job); });
        if (l->closing) return;
      }
      s = SendHandles(l);
      if (s.ok()) s = job.layer >= 0 ? SendLayer(l, job) : SendTrailer(l, job);
      if (!s.ok()) return Kill(l, s);
    }
  }

  absl::Status SendLayer(const std::shared_ptr<IpcSendLink>& l, const IpcSendJob& job) {
    // The event, recorded after the producer's work, is what the receiver's
    // copy waits for: no host sync here.
    if (job.event != nullptr) {
      if (absl::Status s =
              IpcCuda(cudaStreamWaitEvent(l->stream, static_cast<cudaEvent_t>(job.event)),
                      "cudaStreamWaitEvent");
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = IpcCuda(cudaEventRecord(l->event, l->stream), "cudaEventRecord");
        !s.ok()) {
      return s;
    }
    NcclFrame f;
    f.type = NcclFrameType::kLayer;
    f.xfer = job.t->xfer.value;
    f.arg0 = job.layer;
    f.payload = job.entries;
    std::lock_guard<std::mutex> lock(job.t->mu);
    if (job.t->final_status) return absl::OkStatus();  // decided: the receiver reads nothing more
    job.t->receiver_reads = true;
    if (absl::Status s = Write(l, f); !s.ok()) return s;
    counters_.AddBytes(static_cast<int64_t>(job.bytes));
    return absl::OkStatus();
  }

  absl::Status SendTrailer(const std::shared_ptr<IpcSendLink>& l, const IpcSendJob& job) {
    const NcclFrame f = internal::MakeTrailerFrame(job.t->secret, job.t->xfer, job.trailer);
    std::lock_guard<std::mutex> lock(job.t->mu);
    if (job.t->final_status) return absl::OkStatus();
    job.t->trailer_sent = true;
    return Write(l, f);
  }

  // The watchdog's check of a live link: deadlines of its transfers, a
  // receiver that never confirms it stopped reading.
  void CheckLink(const std::shared_ptr<IpcSendLink>& l) {
    const Deadline now = MonoClock::now();
    std::vector<std::shared_ptr<IpcSendXfer>> expired;
    std::shared_ptr<IpcSendXfer> stuck;
    {
      std::lock_guard<std::mutex> lock(l->mu);
      for (auto& [x, t] : l->xfers) {
        std::lock_guard<std::mutex> tl(t->mu);
        if (!t->final_status && now > t->deadline) expired.push_back(t);
        if (t->final_status && !t->done &&
            now > t->decided_at + std::chrono::milliseconds(options_.stuck_grace_ms)) {
          stuck = t;
        }
      }
    }
    for (auto& t : expired) {
      Complete(t,
               absl::DeadlineExceededError(
                   absl::StrCat(XferName(t->xfer), " to ", l->peer, " missed its deadline")),
               true);
    }
    if (stuck) {
      Kill(l, absl::DeadlineExceededError(absl::StrCat(
                  "the receiver did not confirm it stopped reading ", XferName(stuck->xfer))));
    }
  }

  static void Destroy(IpcSendLink& l) {
    if (l.event != nullptr) cudaEventDestroy(l.event);
    if (l.stream != nullptr) cudaStreamDestroy(l.stream);
    l.event = nullptr;
    l.stream = nullptr;
  }

  static void Join(const std::shared_ptr<IpcSendLink>& l) {
    l->JoinThreads();
    if (!l->reader.joinable() && !l->worker.joinable()) Destroy(*l);
  }

  const IpcSenderOptions options_;
  const std::string host_id_;
  internal::TransferCounters counters_;
  std::mutex mu_;
  std::vector<Region> regions_;  // guarded by mu_; fixed once a link exists
  internal::SenderLinks<IpcSendLink> links_;
};

absl::StatusOr<std::unique_ptr<IpcKvSender>> IpcKvSender::Create(IpcSenderOptions options) {
  auto core = std::make_shared<Core>(options);
  core->Start();
  return std::unique_ptr<IpcKvSender>(new IpcKvSender(std::move(core)));
}

IpcKvSender::~IpcKvSender() { core_->Stop(); }

absl::Status IpcKvSender::RegisterRegion(const void* base, size_t bytes) {
  return core_->RegisterRegion(base, bytes);
}

absl::StatusOr<std::unique_ptr<KvSendHandle>> IpcKvSender::StartTransfer(
    TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
    Deadline deadline, SendDoneCallback on_done) {
  absl::StatusOr<std::shared_ptr<IpcSendXfer>> t =
      core_->Open(xfer_id, secret, peer, n_layers, deadline, std::move(on_done));
  if (!t.ok()) return t.status();
  return std::unique_ptr<KvSendHandle>(
      new internal::ControlSendHandle<Core, IpcSendXfer>(core_, std::move(*t)));
}

KvTransportStats IpcKvSender::stats() const { return core_->counters().Snapshot(); }

}  // namespace pdserve::transport
