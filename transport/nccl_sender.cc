#include "transport/nccl_sender.h"

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "transport/control_link.h"
#include "transport/nccl_device.h"
#include "transport/nccl_wire.h"
#include "transport/tcp_socket.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {

using internal::MakeBeginFrame;
using internal::NcclFrame;
using internal::NcclFrameType;

namespace internal {

struct NcclSendLink;

// One outgoing transfer (done: its views are no longer read). Fields below
// SendXferBase::mu are guarded by it.
struct NcclSendXfer final : SendXferBase {
  std::shared_ptr<NcclSendLink> link;
  int32_t layers_sent = 0;
  bool busy = false;           // the link thread reads this transfer's views
  bool abort_pending = false;  // tell the receiver once not busy
};

struct NcclSendJob {
  std::shared_ptr<NcclSendXfer> t;
  int32_t layer = -1;  // -1: the trailer
  std::vector<ConstBlockView> views;
  void* event = nullptr;
  std::string trailer;
};

// One receiver endpoint (`peer`): control connection, communicator, link
// threads.
struct NcclSendLink final : ControlLink {
  NcclDevice dev;
  ncclUniqueId id;
  // Guarded by mu:
  std::deque<NcclSendJob> jobs;
  std::map<uint64_t, std::shared_ptr<NcclSendXfer>> xfers;
  // The transfer whose NCCL operation is in flight, for the watchdog.
  std::shared_ptr<NcclSendXfer> inflight;
};

}  // namespace internal

using internal::NcclSendJob;
using internal::NcclSendLink;
using internal::NcclSendXfer;
using internal::XferName;

class NcclKvSender::Core : public std::enable_shared_from_this<Core> {
 public:
  explicit Core(NcclSenderOptions options) : options_(options) {}

  void Start() {
    links_.Start([](const std::shared_ptr<NcclSendLink>& l) { l->JoinThreads(); },
                 [this](const std::shared_ptr<NcclSendLink>& l) { CheckLink(l); });
  }

  void Stop() {
    const std::vector<std::shared_ptr<NcclSendLink>> links = links_.Stop();
    for (auto& l : links) {
      std::vector<std::shared_ptr<NcclSendXfer>> ts;
      {
        std::lock_guard<std::mutex> lock(l->mu);
        for (auto& [x, t] : l->xfers) ts.push_back(t);
      }
      for (auto& t : ts) Complete(t, absl::CancelledError("NCCL sender shut down"), true);
      Kill(l, absl::CancelledError("NCCL sender shut down"));
    }
    for (auto& l : links) l->JoinThreads();
  }

  internal::TransferCounters& counters() { return counters_; }

  absl::StatusOr<std::shared_ptr<NcclSendXfer>> Open(TransferId xfer, const TransferSecret& secret,
                                                     const std::string& peer, int32_t n_layers,
                                                     Deadline deadline, SendDoneCallback on_done) {
    if (n_layers < 1) return absl::InvalidArgumentError("n_layers must be >= 1");
    if (!absl::StartsWith(peer, internal::kNcclScheme)) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL sender: endpoint '", peer, "' does not start with nccl:"));
    }
    absl::StatusOr<std::shared_ptr<NcclSendLink>> link = GetLink(peer);
    if (!link.ok()) return link.status();
    auto t = std::make_shared<NcclSendXfer>();
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
      return absl::UnavailableError(absl::StrCat("NCCL sender: ", peer, ": ", s.message()));
    }
    counters_.Started();
    return t;
  }

  // For ControlSendHandle.
  absl::Status EnqueueLayer(const std::shared_ptr<NcclSendXfer>& t, int32_t layer,
                            absl::Span<const ConstBlockView> blocks, void* ready_event) {
    NcclSendJob job;
    job.layer = layer;
    job.views.assign(blocks.begin(), blocks.end());
    job.event = ready_event;
    return Enqueue(t, std::move(job));
  }
  absl::Status EnqueueTrailer(const std::shared_ptr<NcclSendXfer>& t, std::string trailer) {
    NcclSendJob job;
    job.layer = -1;
    job.trailer = std::move(trailer);
    return Enqueue(t, std::move(job));
  }

  absl::Status Enqueue(const std::shared_ptr<NcclSendXfer>& t, NcclSendJob job) {
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (absl::Status s = t->GiveLocked(job.layer); !s.ok()) return s;
    }
    job.t = t;
    NcclSendLink& l = *t->link;
    {
      std::lock_guard<std::mutex> lock(l.mu);
      l.jobs.push_back(std::move(job));
    }
    l.cv.notify_all();
    return absl::OkStatus();
  }

  // Decides t's outcome once; callbacks run as soon as the link thread no
  // longer reads its views. notify_peer: send Abort so the receiver stops.
  void Complete(const std::shared_ptr<NcclSendXfer>& t, absl::Status status, bool notify_peer) {
    bool finalize_now = false, abort_now = false;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->final_status) return;
      t->final_status = std::move(status);
      if (t->busy) {
        t->abort_pending = notify_peer;
      } else {
        abort_now = notify_peer;
        finalize_now = true;
      }
    }
    t->link->cv.notify_all();
    if (abort_now) SendAbort(t);
    if (finalize_now) Finalize(t);
  }

  // Called by the link thread when it stops reading t's views.
  void Unbusy(const std::shared_ptr<NcclSendXfer>& t) {
    bool finalize = false, abort = false;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      t->busy = false;
      if (t->final_status && !t->done) {
        finalize = true;
        abort = t->abort_pending;
      }
    }
    if (abort) SendAbort(t);
    if (finalize) Finalize(t);
  }

  void Kill(const std::shared_ptr<NcclSendLink>& l, const absl::Status& why) {
    // Aborting the communicator unblocks a worker inside an NCCL operation.
    if (!l->Close([&] { l->dev.Abort(); })) return;
    std::vector<std::shared_ptr<NcclSendXfer>> ts;
    std::deque<NcclSendJob> dropped;  // jobs hold their transfers, which hold the link
    {
      std::lock_guard<std::mutex> lock(l->mu);
      for (auto& [x, t] : l->xfers) ts.push_back(t);
      dropped.swap(l->jobs);
    }
    if (!ts.empty()) {
      PDS_LOG(WARNING) << "NCCL sender: link to " << l->peer << " failed with " << ts.size()
                       << " transfers in flight: " << why;
    }
    for (auto& t : ts) {
      Complete(t,
               absl::UnavailableError(
                   absl::StrCat(XferName(t->xfer), " to ", l->peer, ": ", why.message())),
               false);
    }
    links_.Retire(l);
  }

 private:
  static absl::Status Write(const std::shared_ptr<NcclSendLink>& l, const NcclFrame& f) {
    return l->Write(f);
  }

  void SendAbort(const std::shared_ptr<NcclSendXfer>& t) {
    NcclFrame f;
    f.type = NcclFrameType::kAbort;
    f.xfer = t->xfer.value;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->final_status) f.arg0 = static_cast<int64_t>(t->final_status->code());
    }
    if (absl::Status s = Write(t->link, f); !s.ok() && !t->link->dead) Kill(t->link, s);
  }

  void Finalize(const std::shared_ptr<NcclSendXfer>& t) {
    SendDoneCallback cb;
    absl::Status status;
    {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->done) return;
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

  absl::StatusOr<std::shared_ptr<NcclSendLink>> GetLink(const std::string& endpoint) {
    std::lock_guard<std::mutex> create_lock(links_.create_mu());
    absl::StatusOr<std::shared_ptr<NcclSendLink>> found = links_.Find(endpoint, "NCCL sender");
    if (!found.ok() || *found) return found;
    absl::StatusOr<internal::UniqueFd> fd = internal::ConnectControl(
        endpoint, internal::kNcclScheme, options_.connect_timeout_ms, "NCCL sender");
    if (!fd.ok()) return fd.status();
    auto l = std::make_shared<NcclSendLink>();
    l->peer = endpoint;
    l->fd = std::move(*fd);
    if (ncclResult_t r = ncclGetUniqueId(&l->id); r != ncclSuccess) {
      return absl::InternalError(absl::StrCat("ncclGetUniqueId: ", ncclGetErrorString(r)));
    }
    NcclFrame hello;
    hello.type = NcclFrameType::kHello;
    hello.payload.assign(reinterpret_cast<const char*>(&l->id), sizeof(l->id));
    if (absl::Status s = internal::WriteNcclFrame(l->fd.get(), hello); !s.ok()) {
      return absl::UnavailableError(absl::StrCat("NCCL sender: ", endpoint, ": ", s.message()));
    }
    internal::StartLinkThreads(
        l, [this](const std::shared_ptr<NcclSendLink>& link) { ReadLoop(link); },
        [this](const std::shared_ptr<NcclSendLink>& link) { WorkLoop(link); });
    links_.Add(l);
    return l;
  }

  void ReadLoop(const std::shared_ptr<NcclSendLink>& l) {
    for (;;) {
      NcclFrame f;
      absl::Status s = internal::ReadNcclFrame(l->fd.get(), &f);
      if (!s.ok()) return Kill(l, s);
      std::shared_ptr<NcclSendXfer> t;
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
            // An early Ack would let the caller free blocks we still read.
            Complete(t,
                     absl::InternalError(absl::StrCat("receiver ", l->peer, " acknowledged ",
                                                      XferName(t->xfer), " before it was sent")),
                     true);
          } else {
            Complete(t, absl::OkStatus(), false);
          }
          break;
        }
        case NcclFrameType::kNack:
          Complete(t,
                   absl::Status(static_cast<absl::StatusCode>(f.arg0),
                                absl::StrCat("receiver ", l->peer, ": ", f.payload)),
                   true);
          break;
        default:
          return Kill(l,
                      absl::InvalidArgumentError("unexpected NCCL control frame from a receiver"));
      }
    }
  }

  // The first job, in order, that can go now: its transfer is Ready, or
  // already decided (the job is then dropped).
  bool TakeJobLocked(NcclSendLink& l, NcclSendJob* out) {
    for (auto it = l.jobs.begin(); it != l.jobs.end(); ++it) {
      std::lock_guard<std::mutex> lock(it->t->mu);
      if (!it->t->final_status && !it->t->ready) continue;
      if (!it->t->final_status) it->t->busy = true;  // claim its views before unlocking
      *out = std::move(*it);
      l.jobs.erase(it);
      return true;
    }
    return false;
  }

  void WorkLoop(const std::shared_ptr<NcclSendLink>& l) {
    absl::Status s = l->dev.Init(options_.device);
    if (s.ok()) {
      s = l->dev.InitComm(
          l->id, 0, MonoClock::now() + std::chrono::milliseconds(options_.comm_init_timeout_ms));
    }
    if (!s.ok()) return Kill(l, s);
    for (;;) {
      NcclSendJob job;
      {
        std::unique_lock<std::mutex> lock(l->mu);
        l->cv.wait(lock, [&] { return l->closing || TakeJobLocked(*l, &job); });
        if (l->closing) {
          if (job.t) Unbusy(job.t);
          return;
        }
      }
      {
        std::lock_guard<std::mutex> lock(job.t->mu);
        if (!job.t->busy) continue;  // decided before it could go: dropped
      }
      s = job.layer >= 0 ? SendLayer(l, job) : SendTrailer(l, job);
      if (!s.ok()) {
        Unbusy(job.t);
        return Kill(l, s);
      }
    }
  }

  absl::Status SendLayer(const std::shared_ptr<NcclSendLink>& l, const NcclSendJob& job) {
    NcclFrame f;
    f.type = NcclFrameType::kLayer;
    f.xfer = job.t->xfer.value;
    f.arg0 = job.layer;
    size_t total = 0;
    f.payload.resize(job.views.size() * 8);
    for (size_t i = 0; i < job.views.size(); ++i) {
      const uint64_t b = job.views[i].bytes;
      std::memcpy(&f.payload[i * 8], &b, 8);
      total += job.views[i].bytes;
    }
    {
      std::lock_guard<std::mutex> lock(l->mu);
      l->inflight = job.t;
    }
    absl::Status s = Write(l, f);
    if (s.ok()) s = l->dev.Pack(job.views, total, static_cast<cudaEvent_t>(job.event));
    if (s.ok()) s = l->dev.Sync();  // the views are free from here on
    Unbusy(job.t);
    // Once the Layer frame went out the receiver expects the bytes, so they
    // are sent even if the transfer was decided meanwhile.
    if (s.ok()) s = l->dev.Send(total, 1);
    if (s.ok()) s = l->dev.Sync();
    {
      std::lock_guard<std::mutex> lock(l->mu);
      l->inflight.reset();
    }
    if (!s.ok()) return s;
    counters_.AddBytes(static_cast<int64_t>(total));
    std::lock_guard<std::mutex> lock(job.t->mu);
    ++job.t->layers_sent;
    return absl::OkStatus();
  }

  absl::Status SendTrailer(const std::shared_ptr<NcclSendLink>& l, const NcclSendJob& job) {
    const NcclFrame f = internal::MakeTrailerFrame(job.t->secret, job.t->xfer, job.trailer);
    {
      std::lock_guard<std::mutex> lock(job.t->mu);
      job.t->trailer_sent = true;
    }
    absl::Status s = Write(l, f);
    Unbusy(job.t);
    return s;
  }

  // The watchdog's check of a live link: deadlines of its transfers, a
  // stuck NCCL operation.
  void CheckLink(const std::shared_ptr<NcclSendLink>& l) {
    const Deadline now = MonoClock::now();
    std::vector<std::shared_ptr<NcclSendXfer>> expired;
    std::shared_ptr<NcclSendXfer> stuck;
    {
      std::lock_guard<std::mutex> lock(l->mu);
      for (auto& [x, t] : l->xfers) {
        if (now > t->deadline) expired.push_back(t);
      }
      if (l->inflight &&
          now > l->inflight->deadline + std::chrono::milliseconds(options_.stuck_grace_ms)) {
        stuck = l->inflight;
      }
    }
    for (auto& t : expired) {
      Complete(t,
               absl::DeadlineExceededError(
                   absl::StrCat(XferName(t->xfer), " to ", l->peer, " missed its deadline")),
               true);
    }
    if (stuck) {
      Kill(l, absl::DeadlineExceededError(
                  absl::StrCat("an NCCL operation of ", XferName(stuck->xfer), " is stuck")));
    }
  }

  const NcclSenderOptions options_;
  internal::TransferCounters counters_;
  internal::SenderLinks<NcclSendLink> links_;
};

absl::StatusOr<std::unique_ptr<NcclKvSender>> NcclKvSender::Create(NcclSenderOptions options) {
  auto core = std::make_shared<Core>(options);
  core->Start();
  return std::unique_ptr<NcclKvSender>(new NcclKvSender(std::move(core)));
}

NcclKvSender::~NcclKvSender() { core_->Stop(); }

absl::StatusOr<std::unique_ptr<KvSendHandle>> NcclKvSender::StartTransfer(
    TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
    Deadline deadline, SendDoneCallback on_done) {
  absl::StatusOr<std::shared_ptr<NcclSendXfer>> t =
      core_->Open(xfer_id, secret, peer, n_layers, deadline, std::move(on_done));
  if (!t.ok()) return t.status();
  return std::unique_ptr<KvSendHandle>(
      new internal::ControlSendHandle<Core, NcclSendXfer>(core_, std::move(*t)));
}

KvTransportStats NcclKvSender::stats() const { return core_->counters().Snapshot(); }

}  // namespace pdserve::transport
