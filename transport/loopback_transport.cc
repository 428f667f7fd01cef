#include "transport/loopback_transport.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <limits>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/check.h"
#include "common/log.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {
namespace internal {

namespace {

std::string XferName(TransferId xfer) { return absl::StrCat("transfer ", xfer.value); }

}  // namespace

// One outgoing loopback transfer. Its LinkId is unique, so to the receiver's
// table every transfer is its own link.
struct LoopbackTransfer {
  TransferId xfer;
  TransferSecret secret;
  std::string peer_name;
  LinkId link = 0;
  int32_t n_layers = 0;
  Deadline deadline;
  int64_t start_ns = 0;
  std::shared_ptr<LoopbackPeer> peer;
  std::shared_ptr<LoopbackSenderCore> sender;

  absl::Mutex mu;
  std::vector<std::vector<ConstBlockView>> layers ABSL_GUARDED_BY(mu);  // [layer][block]
  std::vector<bool> given ABSL_GUARDED_BY(mu);
  int32_t n_given ABSL_GUARDED_BY(mu) = 0;
  bool ready ABSL_GUARDED_BY(mu) = false;
  bool finished ABSL_GUARDED_BY(mu) = false;
  std::string trailer ABSL_GUARDED_BY(mu);
  bool reading ABSL_GUARDED_BY(mu) = false;  // the peer's worker copies from layers
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  SendDoneCallback on_done ABSL_GUARDED_BY(mu);
};

class LoopbackSenderCore {
 public:
  explicit LoopbackSenderCore(LoopbackNetwork* network) : network_(network) {}
  LoopbackNetwork* network() const { return network_; }
  TransferCounters& counters() { return counters_; }

  void Track(const std::shared_ptr<LoopbackTransfer>& t) {
    absl::MutexLock lock(&mu_);
    std::erase_if(live_, [](const std::weak_ptr<LoopbackTransfer>& w) { return w.expired(); });
    live_.push_back(t);
  }
  std::vector<std::shared_ptr<LoopbackTransfer>> Live() {
    absl::MutexLock lock(&mu_);
    std::vector<std::shared_ptr<LoopbackTransfer>> out;
    for (auto& w : live_) {
      if (auto t = w.lock()) out.push_back(std::move(t));
    }
    return out;
  }

 private:
  LoopbackNetwork* const network_;
  TransferCounters counters_;
  absl::Mutex mu_;
  std::vector<std::weak_ptr<LoopbackTransfer>> live_ ABSL_GUARDED_BY(mu_);
};

// Completes t once with status, after any copy from its views finished.
void CompleteTransfer(LoopbackTransfer* t, absl::Status status);

// The receiving side: a ReceiveTable plus the worker that plays the network.
class LoopbackPeer final : public ReplySink {
 public:
  LoopbackPeer(std::string endpoint, LoopbackReceiverOptions options)
      : endpoint_(std::move(endpoint)), table_(this, options.table, &counters_) {}

  void Start() {
    worker_ = std::thread([this] { Work(); });
  }
  void Stop();

  const std::string& endpoint() const { return endpoint_; }
  ReceiveTable& table() { return table_; }
  KvTransportStats stats() const { return counters_.Snapshot(); }

  enum class Kind { kBegin, kLayer, kTrailer, kAbort };
  struct Item {
    std::shared_ptr<LoopbackTransfer> t;
    Kind kind;
    int32_t layer = 0;
  };

  // Registers t's link; false once the peer is shutting down.
  bool Attach(const std::shared_ptr<LoopbackTransfer>& t) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    t->link = next_link_++;
    links_[t->link] = t;
    return true;
  }
  void Detach(LinkId link) {
    {
      absl::MutexLock lock(&mu_);
      links_.erase(link);
    }
    table_.ForgetLink(link);
  }
  void Enqueue(Item item) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;  // Stop() fails every attached transfer
    queue_.push_back(std::move(item));
    cv_.Signal();
  }

  // ReplySink.
  void Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) override;
  void WakeForDeadline() override {
    absl::MutexLock lock(&mu_);
    wake_ = true;
    cv_.Signal();
  }

 private:
  void Work();
  void CopyLayer(const Item& item);

  const std::string endpoint_;
  TransferCounters counters_;
  ReceiveTable table_;
  std::thread worker_;

  absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<LinkId, std::weak_ptr<LoopbackTransfer>> links_ ABSL_GUARDED_BY(mu_);
  LinkId next_link_ ABSL_GUARDED_BY(mu_) = 1;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

void CompleteTransfer(LoopbackTransfer* t, absl::Status status) {
  SendDoneCallback callback;
  {
    absl::MutexLock lock(&t->mu);
    if (t->done) return;
    // The worker may be copying from the views; they stay valid until then.
    t->mu.Await(absl::Condition(
        +[](LoopbackTransfer* x) { return !x->reading; }, t));
    if (t->done) return;
    t->done = true;
    t->status = status;
    t->layers.clear();
    callback = std::move(t->on_done);
  }
  t->sender->counters().Finished(status, MonoNowNs() - t->start_ns);
  t->peer->Detach(t->link);
  if (callback) std::move(callback)(std::move(status));
}

void LoopbackPeer::Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) {
  std::shared_ptr<LoopbackTransfer> t;
  {
    absl::MutexLock lock(&mu_);
    auto it = links_.find(link);
    if (it != links_.end()) t = it->second.lock();
  }
  if (t == nullptr) return;
  switch (kind) {
    case ReplyKind::kReady: {
      absl::MutexLock lock(&t->mu);
      if (t->done || t->ready) return;
      t->ready = true;
      for (int32_t layer = 0; layer < t->n_layers; ++layer) {
        if (t->given[layer]) Enqueue({t, Kind::kLayer, layer});
      }
      if (t->finished) Enqueue({t, Kind::kTrailer});
      return;
    }
    case ReplyKind::kAck:
      CompleteTransfer(t.get(), absl::OkStatus());
      return;
    case ReplyKind::kNack:
      CompleteTransfer(t.get(), absl::Status(status.code(), absl::StrCat("receiver ", endpoint_,
                                                                         ": ", status.message())));
      Enqueue({t, Kind::kAbort});  // the sender's last word: frees the table's tombstone
      return;
  }
}

void LoopbackPeer::CopyLayer(const Item& item) {
  LoopbackTransfer* t = item.t.get();
  std::vector<uint64_t> sizes;
  {
    absl::MutexLock lock(&t->mu);
    if (t->done) return;
    for (const ConstBlockView& b : t->layers[item.layer]) sizes.push_back(b.bytes);
  }
  std::string error;
  LayerVerdict verdict = table_.BeginLayer(t->link, t->xfer, item.layer, sizes, &error);
  if (verdict == LayerVerdict::kProtocolError) {
    // Cannot happen with our own sender; fail loudly rather than hang.
    PDS_LOG(ERROR) << "loopback " << endpoint_ << ": " << error;
    CompleteTransfer(t, absl::InternalError(error));
    return;
  }
  if (verdict == LayerVerdict::kDiscard) return;
  const std::vector<BlockView>* dst = table_.AcquireWrite(t->xfer, item.layer);
  if (dst == nullptr) return;  // cancelled or expired meanwhile
  const std::vector<ConstBlockView>* src = nullptr;
  {
    absl::MutexLock lock(&t->mu);
    if (!t->done) {
      t->reading = true;
      src = &t->layers[item.layer];
    }
  }
  if (src != nullptr) {
    for (size_t i = 0; i < dst->size(); ++i) {
      if ((*dst)[i].bytes > 0) std::memcpy((*dst)[i].data, (*src)[i].data, (*dst)[i].bytes);
    }
    absl::MutexLock lock(&t->mu);
    t->reading = false;
  }
  table_.ReleaseWrite(t->xfer);
  if (src != nullptr) {
    uint64_t bytes = 0;
    for (uint64_t b : sizes) bytes += b;
    t->sender->counters().AddBytes(static_cast<int64_t>(bytes));
    table_.EndLayer(t->link, t->xfer, item.layer, absl::OkStatus());
  }
}

void LoopbackPeer::Work() {
  Deadline next = Deadline::max();
  while (true) {
    std::deque<Item> batch;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty() && !wake_) {
        if (next == Deadline::max()) {
          cv_.Wait(&mu_);
          continue;
        }
        auto left = next - MonoClock::now();
        if (left <= MonoClock::duration::zero()) break;
        cv_.WaitWithTimeout(&mu_, absl::FromChrono(left));
      }
      if (stopping_) return;
      wake_ = false;
      batch.swap(queue_);
    }
    for (Item& item : batch) {
      LoopbackTransfer* t = item.t.get();
      switch (item.kind) {
        case Kind::kBegin: {
          // The same proof as over tcp, so both backends check the secret.
          auto left = std::chrono::ceil<std::chrono::milliseconds>(
              std::max(t->deadline, MonoClock::now()) - MonoClock::now());
          BeginProof proof;
          proof.budget_ms = static_cast<uint32_t>(
              std::min<int64_t>(left.count(), std::numeric_limits<uint32_t>::max()));
          proof.tag =
              BeginTag(t->secret, t->xfer, static_cast<uint32_t>(t->n_layers), proof.budget_ms);
          table_.Announce(t->link, t->xfer, t->n_layers, t->deadline, proof);
          break;
        }
        case Kind::kLayer:
          CopyLayer(item);
          break;
        case Kind::kTrailer: {
          std::string trailer;
          {
            absl::MutexLock lock(&t->mu);
            if (t->done) break;
            trailer = t->trailer;
          }
          AuthTag tag = TrailerTag(t->secret, t->xfer, trailer);
          table_.Trailer(t->link, t->xfer, std::move(trailer), tag, absl::OkStatus());
          break;
        }
        case Kind::kAbort:
          table_.SenderAborted(t->link, t->xfer);
          break;
      }
    }
    next = table_.ExpireDue(MonoClock::now());
  }
}

void LoopbackPeer::Stop() {
  std::vector<std::shared_ptr<LoopbackTransfer>> attached;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    cv_.Signal();
  }
  if (worker_.joinable()) worker_.join();
  {
    absl::MutexLock lock(&mu_);
    queue_.clear();
    for (auto& [link, w] : links_) {
      if (auto t = w.lock()) attached.push_back(std::move(t));
    }
  }
  table_.Shutdown(absl::CancelledError(absl::StrCat("kv receiver ", endpoint_, " shut down")));
  for (auto& t : attached) {
    CompleteTransfer(t.get(),
                     absl::UnavailableError(absl::StrCat("kv receiver ", endpoint_, " went away")));
  }
}

namespace {

class LoopbackSendHandle final : public KvSendHandle {
 public:
  explicit LoopbackSendHandle(std::shared_ptr<LoopbackTransfer> t) : t_(std::move(t)) {}
  ~LoopbackSendHandle() override { Abort(); }

  absl::Status SendLayer(int32_t layer, absl::Span<const ConstBlockView> blocks) override {
    LoopbackTransfer* t = t_.get();
    if (blocks.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(XferName(t->xfer), ": layer ", layer, " has no blocks"));
    }
    for (const ConstBlockView& b : blocks) {
      if (b.data == nullptr && b.bytes > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(XferName(t->xfer), ": layer ", layer, " has a null block view"));
      }
    }
    absl::MutexLock lock(&t->mu);
    if (t->done) return DoneStatusLocked();
    if (t->finished)
      return absl::FailedPreconditionError(XferName(t->xfer) + ": layer after Finish");
    if (layer < 0 || layer >= t->n_layers) {
      return absl::InvalidArgumentError(absl::StrCat(XferName(t->xfer), ": layer ", layer,
                                                     " out of range [0, ", t->n_layers, ")"));
    }
    if (t->given[layer]) {
      return absl::InvalidArgumentError(
          absl::StrCat(XferName(t->xfer), ": layer ", layer, " sent twice"));
    }
    t->layers[layer].assign(blocks.begin(), blocks.end());
    t->given[layer] = true;
    ++t->n_given;
    if (t->ready) t->peer->Enqueue({t_, LoopbackPeer::Kind::kLayer, layer});
    return absl::OkStatus();
  }

  absl::Status Finish(std::string trailer) override {
    LoopbackTransfer* t = t_.get();
    absl::MutexLock lock(&t->mu);
    if (t->done) return DoneStatusLocked();
    if (t->finished) return absl::FailedPreconditionError(XferName(t->xfer) + ": Finish twice");
    if (t->n_given != t->n_layers) {
      return absl::FailedPreconditionError(absl::StrCat(
          XferName(t->xfer), ": Finish after ", t->n_given, " of ", t->n_layers, " layers"));
    }
    t->finished = true;
    t->trailer = std::move(trailer);
    if (t->ready) t->peer->Enqueue({t_, LoopbackPeer::Kind::kTrailer});
    return absl::OkStatus();
  }

  absl::Status Wait() override {
    LoopbackTransfer* t = t_.get();
    absl::MutexLock lock(&t->mu);
    t->mu.Await(absl::Condition(&t->done));
    return t->status;
  }

  std::optional<absl::Status> Poll() override {
    absl::MutexLock lock(&t_->mu);
    if (!t_->done) return std::nullopt;
    return t_->status;
  }

  void Abort() override {
    {
      absl::MutexLock lock(&t_->mu);
      if (t_->done) return;
    }
    CompleteTransfer(t_.get(), absl::CancelledError(XferName(t_->xfer) + " aborted by the sender"));
    t_->peer->Enqueue({t_, LoopbackPeer::Kind::kAbort});
  }

 private:
  absl::Status DoneStatusLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(t_->mu) {
    return t_->status.ok() ? absl::FailedPreconditionError(XferName(t_->xfer) + " already done")
                           : t_->status;
  }

  std::shared_ptr<LoopbackTransfer> t_;
};

}  // namespace
}  // namespace internal

// ---------------------------------------------------------------------------

LoopbackNetwork::~LoopbackNetwork() {
  absl::MutexLock lock(&mu_);
  PDS_CHECK(peers_.empty()) << "a LoopbackKvReceiver outlives its network";
}

absl::Status LoopbackNetwork::Register(const std::string& endpoint,
                                       std::shared_ptr<internal::LoopbackPeer> peer) {
  absl::MutexLock lock(&mu_);
  if (!peers_.emplace(endpoint, std::move(peer)).second) {
    return absl::AlreadyExistsError(absl::StrCat("loopback endpoint ", endpoint, " is taken"));
  }
  return absl::OkStatus();
}

void LoopbackNetwork::Unregister(const std::string& endpoint) {
  absl::MutexLock lock(&mu_);
  peers_.erase(endpoint);
}

std::shared_ptr<internal::LoopbackPeer> LoopbackNetwork::Find(const std::string& endpoint) {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(endpoint);
  return it == peers_.end() ? nullptr : it->second;
}

absl::StatusOr<std::unique_ptr<LoopbackKvReceiver>> LoopbackKvReceiver::Create(
    LoopbackNetwork* network, const std::string& name, LoopbackReceiverOptions options) {
  if (name.empty()) return absl::InvalidArgumentError("loopback receiver needs a name");
  std::string endpoint = absl::StrCat(kLoopbackScheme, name);
  auto peer = std::make_shared<internal::LoopbackPeer>(endpoint, std::move(options));
  absl::Status registered = network->Register(endpoint, peer);
  if (!registered.ok()) return registered;
  peer->Start();
  return std::unique_ptr<LoopbackKvReceiver>(new LoopbackKvReceiver(network, endpoint, peer));
}

LoopbackKvReceiver::LoopbackKvReceiver(LoopbackNetwork* network, std::string endpoint,
                                       std::shared_ptr<internal::LoopbackPeer> peer)
    : network_(network), endpoint_(std::move(endpoint)), peer_(std::move(peer)) {}

LoopbackKvReceiver::~LoopbackKvReceiver() {
  network_->Unregister(endpoint_);
  peer_->Stop();
}

absl::Status LoopbackKvReceiver::Post(TransferId xfer_id, const TransferSecret& secret,
                                      std::vector<std::vector<BlockView>> layers, Deadline deadline,
                                      ReceiveDoneCallback on_done) {
  return peer_->table().Post(xfer_id, secret, std::move(layers), deadline, std::move(on_done));
}

absl::Status LoopbackKvReceiver::Cancel(TransferId xfer_id) {
  return peer_->table().Cancel(xfer_id);
}

KvTransportStats LoopbackKvReceiver::stats() const { return peer_->stats(); }

LoopbackKvSender::LoopbackKvSender(LoopbackNetwork* network)
    : core_(std::make_shared<internal::LoopbackSenderCore>(network)) {}

LoopbackKvSender::~LoopbackKvSender() {
  for (auto& t : core_->Live()) {
    internal::CompleteTransfer(t.get(), absl::CancelledError("sender shut down"));
    t->peer->Enqueue({t, internal::LoopbackPeer::Kind::kAbort});
  }
}

absl::StatusOr<std::unique_ptr<KvSendHandle>> LoopbackKvSender::StartTransfer(
    TransferId xfer_id, const TransferSecret& secret, const std::string& peer, int32_t n_layers,
    Deadline deadline, SendDoneCallback on_done) {
  if (!absl::StartsWith(peer, kLoopbackScheme)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", peer, "' is not a loopback endpoint (", kLoopbackScheme, "NAME)"));
  }
  if (n_layers <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("transfer ", xfer_id.value, ": n_layers ", n_layers));
  }
  std::shared_ptr<internal::LoopbackPeer> receiver = core_->network()->Find(peer);
  if (receiver == nullptr) {
    return absl::UnavailableError(absl::StrCat("no loopback receiver at ", peer));
  }
  auto t = std::make_shared<internal::LoopbackTransfer>();
  t->xfer = xfer_id;
  t->secret = secret;
  t->peer_name = peer;
  t->n_layers = n_layers;
  t->deadline = deadline;
  t->start_ns = MonoNowNs();
  t->peer = receiver;
  t->sender = core_;
  {
    absl::MutexLock lock(&t->mu);
    t->layers.resize(n_layers);
    t->given.assign(n_layers, false);
    t->on_done = std::move(on_done);
  }
  if (!receiver->Attach(t)) {
    return absl::UnavailableError(absl::StrCat("loopback receiver at ", peer, " is shutting down"));
  }
  core_->Track(t);
  core_->counters().Started();
  receiver->Enqueue({t, internal::LoopbackPeer::Kind::kBegin});
  return std::unique_ptr<KvSendHandle>(new internal::LoopbackSendHandle(std::move(t)));
}

KvTransportStats LoopbackKvSender::stats() const { return core_->counters().Snapshot(); }

}  // namespace pdserve::transport
