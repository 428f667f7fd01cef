#include "transport/control_link.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace pdserve::transport::internal {

absl::Status ControlLink::Write(const NcclFrame& f) {
  if (dead) return absl::UnavailableError("link closed");
  std::lock_guard<std::mutex> lock(write_mu);
  return WriteNcclFrame(fd.get(), f);
}

bool ControlLink::Close(const std::function<void()>& first) {
  if (dead.exchange(true)) return false;
  if (first) first();
  ::shutdown(fd.get(), SHUT_RDWR);
  {
    std::lock_guard<std::mutex> lock(mu);
    closing = true;
  }
  cv.notify_all();
  return true;
}

void ControlLink::JoinThreads() {
  if (reader.joinable() && reader.get_id() != std::this_thread::get_id()) reader.join();
  if (worker.joinable() && worker.get_id() != std::this_thread::get_id()) worker.join();
}

ControlPort::ControlPort(ControlPortOptions options)
    : port_options_(std::move(options)), table_(this, port_options_.table, &counters_) {}

absl::Status ControlPort::Start() {
  absl::StatusOr<UniqueFd> fd = ListenTcp(port_options_.listen_host, port_options_.port, 64);
  if (!fd.ok()) return fd.status();
  absl::StatusOr<uint16_t> port = LocalPort(fd->get());
  if (!port.ok()) return port.status();
  listen_ = std::move(*fd);
  const std::string& host = port_options_.advertise_host.empty() ? port_options_.listen_host
                                                                 : port_options_.advertise_host;
  endpoint_ = absl::StrCat(port_options_.scheme, FormatHostPort(host, *port));
  acceptor_ = std::thread([this] { AcceptLoop(); });
  timer_ = std::thread([this] { TimerLoop(); });
  return absl::OkStatus();
}

void ControlPort::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  timer_cv_.notify_all();
  if (acceptor_.joinable()) acceptor_.join();
  if (timer_.joinable()) timer_.join();
  table_.Shutdown(absl::CancelledError(absl::StrCat(port_options_.name, " shut down")));
  std::vector<std::shared_ptr<ControlLink>> links;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, l] : links_) links.push_back(l);
    links.insert(links.end(), dead_.begin(), dead_.end());
    links_.clear();
    dead_.clear();
  }
  for (auto& l : links)
    Kill(l, absl::UnavailableError(absl::StrCat(port_options_.name, " shut down")));
  for (auto& l : links) {
    l->JoinThreads();
    OnJoined(*l);
  }
}

void ControlPort::Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) {
  std::shared_ptr<ControlLink> l = FindLink(link);
  if (!l) return;
  NcclFrame f;
  f.xfer = xfer.value;
  f.type = kind == ReplyKind::kReady ? NcclFrameType::kReady
           : kind == ReplyKind::kAck ? NcclFrameType::kAck
                                     : NcclFrameType::kNack;
  if (kind == ReplyKind::kNack) {
    f.arg0 = static_cast<int64_t>(status.code());
    f.payload = std::string(status.message());
  }
  if (absl::Status s = l->Write(f); !s.ok()) Kill(l, s);
}

void ControlPort::WakeForDeadline() { timer_cv_.notify_all(); }

std::shared_ptr<ControlLink> ControlPort::FindLink(LinkId id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = links_.find(id);
  return it == links_.end() ? nullptr : it->second;
}

void ControlPort::AcceptLoop() {
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    pollfd p{listen_.get(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int fd = ::accept(listen_.get(), nullptr, nullptr);
    if (fd < 0) continue;
    std::shared_ptr<ControlLink> l = NewLink();
    l->fd = UniqueFd(fd);
    TuneSocket(fd, 0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      // (Closed links waiting to be joined do not count: their threads are
      // on their way out.)
      if (static_cast<int>(links_.size()) >= port_options_.max_connections) {
        counters_.ConnectionRefused();
        PDS_LOG(WARNING) << port_options_.name << " " << endpoint_
                         << ": refusing a connection, already " << links_.size();
        continue;  // l's fd closes
      }
      l->id = next_link_++;
      l->peer = absl::StrCat("sender link ", l->id);
      links_[l->id] = l;
    }
    // The accepted socket may inherit O_NONBLOCK from the listener.
    const int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    StartLinkThreads(
        l, [this](const std::shared_ptr<ControlLink>& link) { ReadLoop(link); },
        [this](const std::shared_ptr<ControlLink>& link) { WorkLoop(link); });
  }
}

void ControlPort::TimerLoop() {
  for (;;) {
    std::vector<std::shared_ptr<ControlLink>> reap;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) return;
      reap.swap(dead_);
    }
    for (auto& l : reap) {
      l->JoinThreads();
      OnJoined(*l);
    }
    const Deadline next = table_.ExpireDue(MonoClock::now());
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) return;
    const auto wait = std::min<Deadline>(next, MonoClock::now() + std::chrono::milliseconds(100));
    timer_cv_.wait_until(lock, wait, [&] { return stopping_ || !dead_.empty(); });
  }
}

void ControlPort::Kill(const std::shared_ptr<ControlLink>& l, const absl::Status& why) {
  bool erased = false;
  // The link's slot is free before its socket closes: a peer that sees the
  // close and connects again finds room under max_connections.
  const bool closed = l->Close([&] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      erased = links_.erase(l->id) > 0;
    }
    OnClose(*l);
  });
  if (!closed) return;
  PDS_LOG(INFO) << port_options_.name << ": " << l->peer << " closed: " << why;
  table_.LinkClosed(l->id, absl::UnavailableError(absl::StrCat(l->peer, ": ", why.message())));
  std::lock_guard<std::mutex> lock(mu_);
  if (erased) dead_.push_back(l);
  timer_cv_.notify_all();
}

void ControlPort::Bad(const std::shared_ptr<ControlLink>& l, const std::string& what) {
  counters_.ProtocolError();
  Kill(l, absl::InvalidArgumentError(what));
}

bool ControlPort::ReadFrame(const std::shared_ptr<ControlLink>& l, NcclFrame* f,
                            uint32_t max_payload) {
  absl::Status s = ReadNcclFrame(l->fd.get(), f, max_payload);
  if (s.ok()) return true;
  if (absl::IsInvalidArgument(s)) counters_.ProtocolError();
  Kill(l, absl::UnavailableError(absl::StrCat(l->peer, ": ", s.message())));
  return false;
}

uint32_t ControlPort::MaxPayload(uint64_t entry_bytes) const {
  return static_cast<uint32_t>(std::min<uint64_t>(
      kNcclMaxPayload,
      std::max<uint64_t>(uint64_t{port_options_.limits.max_blocks_per_layer} * entry_bytes,
                         port_options_.limits.max_trailer_bytes + kAuthTagBytes)));
}

bool ControlPort::Announce(const std::shared_ptr<ControlLink>& l, const NcclFrame& f) {
  if (f.arg0 < 1 || f.arg0 > port_options_.limits.max_layers || f.arg1 < 0 ||
      f.arg1 > std::numeric_limits<uint32_t>::max() || f.payload.size() != kAuthTagBytes) {
    Bad(l, absl::StrCat("bad Begin frame for transfer ", f.xfer, " (n_layers ", f.arg0, ", budget ",
                        f.arg1, " ms, ", f.payload.size(), " payload bytes)"));
    return false;
  }
  BeginProof proof;
  proof.budget_ms = static_cast<uint32_t>(f.arg1);
  std::memcpy(proof.tag.data(), f.payload.data(), kAuthTagBytes);
  table_.Announce(l->id, TransferId{f.xfer}, static_cast<int32_t>(f.arg0),
                  MonoClock::now() + std::chrono::milliseconds(f.arg1), proof);
  return true;
}

bool ControlPort::AwaitVerified(const std::shared_ptr<ControlLink>& l,
                                const std::function<bool()>& ready) {
  const Deadline verify_by =
      MonoClock::now() + std::chrono::milliseconds(port_options_.verify_timeout_ms);
  for (;;) {
    bool is_ready;
    {
      std::unique_lock<std::mutex> lock(l->mu);
      l->cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return l->closing; });
      if (l->closing) return false;
      is_ready = ready();
    }
    if (is_ready && table_.LinkVerified(l->id)) return true;
    if (MonoClock::now() >= verify_by) {
      counters_.ConnectionTimedOut();
      Kill(l, absl::DeadlineExceededError(
                  absl::StrCat("no Begin proved its transfer's secret within ",
                               port_options_.verify_timeout_ms, " ms of connecting")));
      return false;
    }
  }
}

absl::Status SplitTrailer(std::string payload, std::string* trailer, AuthTag* tag) {
  if (payload.size() < kAuthTagBytes) {
    return absl::InvalidArgumentError("Trailer frame without its tag");
  }
  std::memcpy(tag->data(), payload.data() + payload.size() - kAuthTagBytes, kAuthTagBytes);
  payload.resize(payload.size() - kAuthTagBytes);
  *trailer = std::move(payload);
  return absl::OkStatus();
}

int32_t AbortCode(const NcclFrame& f) {
  return f.arg0 > 0 && f.arg0 <= 16 ? static_cast<int32_t>(f.arg0) : 0;
}

void SendXferBase::Init(TransferId id, const TransferSecret& s, int32_t layers, Deadline d,
                        SendDoneCallback done_cb) {
  xfer = id;
  secret = s;
  n_layers = layers;
  deadline = d;
  start_ns = MonoNowNs();
  on_done = std::move(done_cb);
  given.assign(layers, false);
}

absl::Status SendXferBase::GiveLocked(int32_t layer) {
  if (final_status) return *final_status;
  if (layer >= 0) {
    if (layer >= n_layers || given[layer]) {
      return absl::InvalidArgumentError(
          absl::StrCat(XferName(xfer), ": layer ", layer, " is out of range or was already sent"));
    }
    given[layer] = true;
    ++n_given;
    return absl::OkStatus();
  }
  if (finish_called) return absl::FailedPreconditionError("Finish called twice");
  if (n_given != n_layers) {
    return absl::FailedPreconditionError(
        absl::StrCat(XferName(xfer), ": Finish before all ", n_layers, " layers were given"));
  }
  finish_called = true;
  return absl::OkStatus();
}

void SendXferBase::WaitDone() {
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
}

std::optional<absl::Status> SendXferBase::PollDone() {
  std::lock_guard<std::mutex> lock(mu);
  if (!done) return std::nullopt;
  return *final_status;
}

std::string XferName(TransferId x) { return absl::StrCat("transfer ", x.value); }

NcclFrame MakeTrailerFrame(const TransferSecret& secret, TransferId xfer,
                           const std::string& trailer) {
  NcclFrame f;
  f.type = NcclFrameType::kTrailer;
  f.xfer = xfer.value;
  const AuthTag tag = TrailerTag(secret, xfer, trailer);
  f.payload = trailer;
  f.payload.append(reinterpret_cast<const char*>(tag.data()), tag.size());
  return f;
}

absl::StatusOr<UniqueFd> ConnectControl(const std::string& endpoint, const char* scheme,
                                        int timeout_ms, const char* who) {
  absl::StatusOr<HostPort> hp = ParseHostPort(endpoint.substr(std::strlen(scheme)));
  if (!hp.ok()) return hp.status();
  absl::StatusOr<UniqueFd> fd = ConnectBlocking(*hp, timeout_ms);
  if (!fd.ok()) {
    return absl::UnavailableError(
        absl::StrCat(who, ": cannot reach ", endpoint, ": ", fd.status().message()));
  }
  return fd;
}

}  // namespace pdserve::transport::internal
