#include "transport/tcp_receiver.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "transport/tcp_socket.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {

using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;
using internal::LayerVerdict;
using internal::LinkId;

namespace {

constexpr uint64_t kListenToken = 0;
constexpr int kMaxIov = IOV_MAX;
constexpr size_t kDiscardChunk = 64 << 10;

enum class Phase {
  kHeader,   // reading a frame header
  kTable,    // reading a Layer frame's block-size table
  kData,     // reading layer bytes into the posted views
  kDiscard,  // reading bytes nobody wants (failed transfer) and dropping them
  kPayload,  // reading a Begin's tag or a Trailer's bytes
};

struct Conn {
  uint64_t id = 0;
  std::string peer;
  internal::UniqueFd fd;
  // Until one of its announcements proved its secret: closed at verify_by.
  bool verified = false;
  Deadline verify_by = Deadline::max();
  // Control frames to send (Ready/Ack/Nack): guarded by Impl::mu_.
  std::string out;
  size_t out_sent = 0;
  bool want_out = false;
  // Reader state: the loop thread only.
  Phase phase = Phase::kHeader;
  std::array<uint8_t, kFrameHeaderBytes> header{};
  size_t header_got = 0;
  FrameHeader frame;
  std::vector<uint8_t> table;
  size_t table_got = 0;
  uint64_t data_total = 0;
  uint64_t data_got = 0;
  uint32_t crc = 0;
  uint64_t discard_left = 0;
  std::string payload;
  size_t payload_got = 0;
};

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  }
  return internal::FormatHostPort(host, port);
}

}  // namespace

class TcpKvReceiver::Impl final : public internal::ReplySink {
 public:
  Impl(TcpReceiverOptions options, internal::Poller poller, internal::UniqueFd listen_fd,
       std::string endpoint)
      : options_(std::move(options)),
        poller_(std::move(poller)),
        listen_fd_(std::move(listen_fd)),
        endpoint_(std::move(endpoint)),
        table_(this, options_.table, &counters_) {}

  absl::Status Start() {
    PDS_RETURN_IF_ERROR(poller_.Add(listen_fd_.get(), EPOLLIN, kListenToken));
    loop_ = std::thread([this] { Loop(); });
    return absl::OkStatus();
  }
  void Stop();

  const std::string& endpoint() const { return endpoint_; }
  internal::ReceiveTable& table() { return table_; }
  KvTransportStats stats() const { return counters_.Snapshot(); }

  // internal::ReplySink.
  void Reply(LinkId link, TransferId xfer, internal::ReplyKind kind,
             const absl::Status& status) override;
  void WakeForDeadline() override { poller_.Wake(); }

 private:
  void Loop();
  void Accept();
  absl::Status HandleReadable(Conn* c);
  absl::Status StartFrame(Conn* c, const FrameHeader& h);
  absl::Status EndTable(Conn* c);
  absl::Status EndPayload(Conn* c);
  // Closes the connections that did not prove a secret in time; returns when
  // to look again.
  Deadline CloseUnverified(Deadline now);
  // Marks the connections that proved a secret since the last look.
  void RefreshVerified();
  absl::Status ReadData(Conn* c, bool* would_block);
  absl::Status FlushOut(Conn* c);
  void CloseConn(const std::shared_ptr<Conn>& c, const absl::Status& why);

  const TcpReceiverOptions options_;
  internal::Poller poller_;
  internal::UniqueFd listen_fd_;
  const std::string endpoint_;
  internal::TransferCounters counters_;
  internal::ReceiveTable table_;
  std::thread loop_;
  std::vector<uint8_t> scratch_ = std::vector<uint8_t>(kDiscardChunk);  // loop thread only

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Conn>> conns_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  int unverified_ ABSL_GUARDED_BY(mu_) = 0;  // connections in conns_ not yet verified
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TcpKvReceiver>> TcpKvReceiver::Create(TcpReceiverOptions options) {
  PDS_ASSIGN_OR_RETURN(internal::UniqueFd listen_fd,
                       internal::ListenTcp(options.listen_host, options.port, /*backlog=*/256));
  PDS_ASSIGN_OR_RETURN(uint16_t port, internal::LocalPort(listen_fd.get()));
  std::string host = options.advertise_host;
  if (host.empty()) {
    host = options.listen_host;
    if (host.empty() || host == "0.0.0.0" || host == "::") {
      char name[256] = {};
      if (::gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0') host = name;
    }
  }
  PDS_ASSIGN_OR_RETURN(internal::Poller poller, internal::Poller::Create());
  auto impl = std::make_unique<Impl>(std::move(options), std::move(poller), std::move(listen_fd),
                                     internal::FormatHostPort(host, port));
  PDS_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<TcpKvReceiver>(new TcpKvReceiver(std::move(impl)));
}

TcpKvReceiver::TcpKvReceiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TcpKvReceiver::~TcpKvReceiver() { impl_->Stop(); }

std::string TcpKvReceiver::endpoint() const { return impl_->endpoint(); }

absl::Status TcpKvReceiver::Post(TransferId xfer_id, const TransferSecret& secret,
                                 std::vector<std::vector<BlockView>> layers, Deadline deadline,
                                 ReceiveDoneCallback on_done) {
  return impl_->table().Post(xfer_id, secret, std::move(layers), deadline, std::move(on_done));
}

absl::Status TcpKvReceiver::Cancel(TransferId xfer_id) { return impl_->table().Cancel(xfer_id); }

KvTransportStats TcpKvReceiver::stats() const { return impl_->stats(); }

// ---------------------------------------------------------------------------

void TcpKvReceiver::Impl::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  poller_.Wake();
  if (loop_.joinable()) loop_.join();
  // Closing the sockets fails the senders' transfers promptly (Unavailable).
  std::vector<std::shared_ptr<Conn>> conns;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, c] : conns_) conns.push_back(c);
    conns_.clear();
  }
  for (auto& c : conns) {
    poller_.Remove(c->fd.get());
    c->fd.Reset();
  }
  listen_fd_.Reset();
  table_.Shutdown(absl::CancelledError(absl::StrCat("kv receiver ", endpoint_, " shut down")));
}

void TcpKvReceiver::Impl::Reply(LinkId link, TransferId xfer, internal::ReplyKind kind,
                                const absl::Status& status) {
  FrameHeader h;
  h.xfer_id = xfer.value;
  std::string message;
  switch (kind) {
    case internal::ReplyKind::kReady:
      h.type = FrameType::kReady;
      break;
    case internal::ReplyKind::kAck:
      h.type = FrameType::kAck;
      break;
    case internal::ReplyKind::kNack:
      h.type = FrameType::kNack;
      h.arg0 = static_cast<uint32_t>(status.code());
      message = std::string(status.message().substr(
          0, std::min<size_t>(status.message().size(), options_.limits.max_message_bytes)));
      break;
  }
  std::string frame = internal::EncodeSmallFrame(h, message, /*checksum=*/true);
  {
    absl::MutexLock lock(&mu_);
    auto it = conns_.find(link);
    if (it == conns_.end()) return;  // the sender's connection is gone
    it->second->out += frame;
  }
  poller_.Wake();
}

void TcpKvReceiver::Impl::Accept() {
  while (true) {
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        PDS_LOG(WARNING) << "kv receiver " << endpoint_ << ": accept: " << std::strerror(errno);
      }
      return;
    }
    auto c = std::make_shared<Conn>();
    c->fd = internal::UniqueFd(fd);
    c->peer = PeerName(fd);
    internal::TuneSocket(fd, options_.socket_buffer_bytes);
    bool unverified_full;
    {
      absl::MutexLock lock(&mu_);
      unverified_full = unverified_ >= options_.max_unverified_connections;
    }
    if (unverified_full) RefreshVerified();  // some may have proved themselves since
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(conns_.size()) >= options_.max_connections ||
        unverified_ >= options_.max_unverified_connections) {
      // Logged once per 1000 so that a flood does not flood the log too.
      counters_.ConnectionRefused();
      if (counters_.Snapshot().connections_refused % 1000 == 1) {
        PDS_LOG(WARNING) << "kv receiver " << endpoint_ << ": refusing " << c->peer << ", already "
                         << conns_.size() << " connections (" << unverified_ << " not verified)";
      }
      continue;  // closes it
    }
    c->id = next_id_++;
    c->verify_by = MonoClock::now() + options_.verify_timeout;
    absl::Status added = poller_.Add(fd, EPOLLIN, c->id);
    if (!added.ok()) {
      PDS_LOG(WARNING) << "kv receiver " << endpoint_ << ": " << added;
      continue;
    }
    ++unverified_;
    conns_[c->id] = std::move(c);
  }
}

void TcpKvReceiver::Impl::RefreshVerified() {
  std::vector<std::shared_ptr<Conn>> unverified;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, c] : conns_) {
      if (!c->verified) unverified.push_back(c);
    }
  }
  for (auto& c : unverified) {
    if (!table_.LinkVerified(c->id)) continue;
    absl::MutexLock lock(&mu_);
    if (!c->verified && conns_.contains(c->id)) {
      c->verified = true;
      --unverified_;
    }
  }
}

Deadline TcpKvReceiver::Impl::CloseUnverified(Deadline now) {
  std::vector<std::shared_ptr<Conn>> unverified;
  {
    absl::MutexLock lock(&mu_);
    if (unverified_ == 0) return Deadline::max();
    for (auto& [id, c] : conns_) {
      if (!c->verified) unverified.push_back(c);
    }
  }
  Deadline next = Deadline::max();
  for (auto& c : unverified) {
    if (table_.LinkVerified(c->id)) {
      absl::MutexLock lock(&mu_);
      if (!c->verified && conns_.contains(c->id)) {
        c->verified = true;
        --unverified_;
      }
    } else if (c->verify_by <= now) {
      counters_.ConnectionTimedOut();
      CloseConn(c, absl::DeadlineExceededError(
                       absl::StrCat("no announcement proved its transfer's secret within ",
                                    options_.verify_timeout.count(), " ms of connecting")));
    } else {
      next = std::min(next, c->verify_by);
    }
  }
  return next;
}

void TcpKvReceiver::Impl::CloseConn(const std::shared_ptr<Conn>& c, const absl::Status& why) {
  if (absl::IsInvalidArgument(why) || absl::IsDataLoss(why) || absl::IsInternal(why)) {
    counters_.ProtocolError();
    PDS_LOG(ERROR) << "kv receiver " << endpoint_ << ": closing connection from " << c->peer << ": "
                   << why;
  } else {
    PDS_LOG(DEBUG) << "kv receiver " << endpoint_ << ": connection from " << c->peer
                   << " closed: " << why;
  }
  {
    absl::MutexLock lock(&mu_);
    if (conns_.erase(c->id) > 0 && !c->verified) --unverified_;
  }
  poller_.Remove(c->fd.get());
  c->fd.Reset();
  table_.LinkClosed(c->id, absl::UnavailableError(absl::StrCat("connection from sender ", c->peer,
                                                               " lost: ", why.message())));
}

absl::Status TcpKvReceiver::Impl::FlushOut(Conn* c) {
  absl::MutexLock lock(&mu_);
  while (c->out_sent < c->out.size()) {
    ssize_t n =
        ::send(c->fd.get(), c->out.data() + c->out_sent, c->out.size() - c->out_sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return internal::ErrnoStatus(absl::StrCat("send to ", c->peer), errno);
    }
    c->out_sent += n;
  }
  if (c->out_sent == c->out.size()) {
    c->out.clear();
    c->out_sent = 0;
  }
  bool want = !c->out.empty();
  if (want != c->want_out) {
    c->want_out = want;
    PDS_RETURN_IF_ERROR(
        poller_.Modify(c->fd.get(), EPOLLIN | (want ? uint32_t{EPOLLOUT} : 0u), c->id));
  }
  return absl::OkStatus();
}

absl::Status TcpKvReceiver::Impl::StartFrame(Conn* c, const FrameHeader& h) {
  TransferId xfer{h.xfer_id};
  c->frame = h;
  c->phase = Phase::kHeader;
  switch (h.type) {
    case FrameType::kBegin:  // its tag
    case FrameType::kTrailer:
      c->payload.assign(h.payload_len, '\0');
      c->payload_got = 0;
      c->phase = Phase::kPayload;
      return absl::OkStatus();
    case FrameType::kLayer:
      c->table.assign(size_t{h.arg1} * 8, 0);
      c->table_got = 0;
      c->data_total = h.payload_len - c->table.size();
      c->data_got = 0;
      c->phase = Phase::kTable;
      return absl::OkStatus();
    case FrameType::kAbort:
      table_.SenderAborted(c->id, xfer, static_cast<absl::StatusCode>(h.arg0));
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected ", internal::FrameTypeName(h.type), " frame from a sender"));
  }
}

absl::Status TcpKvReceiver::Impl::EndTable(Conn* c) {
  const FrameHeader& h = c->frame;
  PDS_ASSIGN_OR_RETURN(std::vector<uint64_t> sizes, internal::ParseBlockTable(h, c->table.data()));
  c->crc = internal::Crc32(0, c->table.data(), c->table.size());
  std::string error;
  LayerVerdict verdict =
      table_.BeginLayer(c->id, TransferId{h.xfer_id}, static_cast<int32_t>(h.arg0), sizes, &error);
  if (verdict == LayerVerdict::kProtocolError) return absl::InvalidArgumentError(error);
  if (verdict == LayerVerdict::kDiscard) {
    c->discard_left = c->data_total;
    c->phase = c->discard_left > 0 ? Phase::kDiscard : Phase::kHeader;
    return absl::OkStatus();
  }
  c->phase = Phase::kData;
  if (c->data_total == 0) {
    c->phase = Phase::kHeader;
    bool bad_crc = (h.flags & internal::kFlagPayloadCrc) && c->crc != h.payload_crc;
    table_.EndLayer(c->id, TransferId{h.xfer_id}, static_cast<int32_t>(h.arg0),
                    bad_crc ? absl::DataLossError("checksum mismatch") : absl::OkStatus());
  }
  return absl::OkStatus();
}

absl::Status TcpKvReceiver::Impl::EndPayload(Conn* c) {
  c->phase = Phase::kHeader;
  const FrameHeader& h = c->frame;
  const TransferId xfer{h.xfer_id};
  std::string payload = std::move(c->payload);
  c->payload.clear();
  const bool bad_crc = (h.flags & internal::kFlagPayloadCrc) &&
                       internal::Crc32(0, payload.data(), payload.size()) != h.payload_crc;
  AuthTag tag;
  PDS_RETURN_IF_ERROR(internal::SplitTag(&payload, &tag));  // DecodeFrameHeader checked the size
  if (h.type == FrameType::kBegin) {
    if (bad_crc) {
      return absl::DataLossError(
          absl::StrCat("Begin frame for transfer ", h.xfer_id, ": checksum mismatch"));
    }
    table_.Announce(c->id, xfer, static_cast<int32_t>(h.arg0),
                    MonoClock::now() + std::chrono::milliseconds(h.arg1), BeginProof{h.arg1, tag});
    return absl::OkStatus();
  }
  if (!table_.Trailer(c->id, xfer, std::move(payload), tag,
                      bad_crc ? absl::DataLossError(absl::StrCat("transfer ", h.xfer_id,
                                                                 ": trailer checksum mismatch"))
                              : absl::OkStatus())) {
    return absl::InvalidArgumentError(
        absl::StrCat("trailer for transfer ", h.xfer_id, " not open on this link"));
  }
  return absl::OkStatus();
}

absl::Status TcpKvReceiver::Impl::ReadData(Conn* c, bool* would_block) {
  const FrameHeader& h = c->frame;
  TransferId xfer{h.xfer_id};
  int32_t layer = static_cast<int32_t>(h.arg0);
  const std::vector<BlockView>* views = table_.AcquireWrite(xfer, layer);
  if (views == nullptr) {
    // Cancelled or expired meanwhile: its blocks may already be reused.
    c->discard_left = c->data_total - c->data_got;
    c->phase = Phase::kDiscard;
    return absl::OkStatus();
  }
  std::array<iovec, kMaxIov> iov;
  int n_iov = 0;
  uint64_t offset = 0;
  for (const BlockView& v : *views) {
    if (n_iov == kMaxIov) break;
    uint64_t begin = std::max(offset, c->data_got);
    if (begin < offset + v.bytes) {
      iov[n_iov++] = {static_cast<char*>(v.data) + (begin - offset), offset + v.bytes - begin};
    }
    offset += v.bytes;
  }
  ssize_t n = ::readv(c->fd.get(), iov.data(), n_iov);
  int err = errno;
  if (n > 0 && (h.flags & internal::kFlagPayloadCrc)) {
    // While we still hold the write: afterwards the blocks may be freed.
    size_t left = static_cast<size_t>(n);
    for (int i = 0; i < n_iov && left > 0; ++i) {
      size_t take = std::min(left, iov[i].iov_len);
      c->crc = internal::Crc32(c->crc, iov[i].iov_base, take);
      left -= take;
    }
  }
  table_.ReleaseWrite(xfer);
  if (n == 0) return absl::UnavailableError("sender closed the connection mid-layer");
  if (n < 0) {
    if (err == EAGAIN || err == EWOULDBLOCK) {
      *would_block = true;
      return absl::OkStatus();
    }
    if (err == EINTR) return absl::OkStatus();
    return internal::ErrnoStatus(absl::StrCat("recv from ", c->peer), err);
  }
  c->data_got += n;
  if (c->data_got == c->data_total) {
    c->phase = Phase::kHeader;
    absl::Status status;
    if ((h.flags & internal::kFlagPayloadCrc) && c->crc != h.payload_crc) {
      status = absl::DataLossError(
          absl::StrCat("transfer ", h.xfer_id, ": checksum mismatch in layer ", layer));
    }
    table_.EndLayer(c->id, xfer, layer, status);
  }
  return absl::OkStatus();
}

absl::Status TcpKvReceiver::Impl::HandleReadable(Conn* c) {
  // Bounded so one busy sender cannot starve the others.
  for (int round = 0; round < 64; ++round) {
    if (c->phase == Phase::kData) {
      bool would_block = false;
      PDS_RETURN_IF_ERROR(ReadData(c, &would_block));
      if (would_block) return absl::OkStatus();
      continue;
    }
    void* dst = nullptr;
    size_t want = 0;
    switch (c->phase) {
      case Phase::kHeader:
        dst = c->header.data() + c->header_got;
        want = kFrameHeaderBytes - c->header_got;
        break;
      case Phase::kTable:
        dst = c->table.data() + c->table_got;
        want = c->table.size() - c->table_got;
        break;
      case Phase::kDiscard:
        dst = scratch_.data();
        want = std::min<uint64_t>(c->discard_left, scratch_.size());
        break;
      case Phase::kPayload:
        dst = c->payload.data() + c->payload_got;
        want = c->payload.size() - c->payload_got;
        break;
      case Phase::kData:
        break;
    }
    ssize_t n = want > 0 ? ::recv(c->fd.get(), dst, want, 0) : 0;
    if (want > 0 && n == 0) {
      if (c->phase == Phase::kHeader && c->header_got == 0) {
        return absl::UnavailableError("sender closed the connection");
      }
      return absl::UnavailableError("sender closed the connection mid-frame");
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return absl::OkStatus();
      return internal::ErrnoStatus(absl::StrCat("recv from ", c->peer), errno);
    }
    switch (c->phase) {
      case Phase::kHeader: {
        c->header_got += n;
        if (c->header_got < kFrameHeaderBytes) break;
        c->header_got = 0;
        absl::StatusOr<FrameHeader> h =
            internal::DecodeFrameHeader(c->header.data(), options_.limits);
        if (!h.ok()) return h.status();
        PDS_RETURN_IF_ERROR(StartFrame(c, *h));
        if (c->phase == Phase::kPayload && c->payload.empty()) PDS_RETURN_IF_ERROR(EndPayload(c));
        break;
      }
      case Phase::kTable:
        c->table_got += n;
        if (c->table_got == c->table.size()) PDS_RETURN_IF_ERROR(EndTable(c));
        break;
      case Phase::kDiscard:
        c->discard_left -= n;
        if (c->discard_left == 0) c->phase = Phase::kHeader;
        break;
      case Phase::kPayload:
        c->payload_got += n;
        if (c->payload_got == c->payload.size()) PDS_RETURN_IF_ERROR(EndPayload(c));
        break;
      case Phase::kData:
        break;
    }
  }
  return absl::OkStatus();
}

void TcpKvReceiver::Impl::Loop() {
  std::array<epoll_event, 64> events;
  int timeout_ms = 0;
  // When to look at unverified connections again: after an accept, or at the
  // earliest verify_by. Not every round: a busy loop must stay cheap.
  Deadline next_verify_check = Deadline::max();
  while (true) {
    int n = poller_.Wait(events.data(), events.size(), timeout_ms);
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == kListenToken) {
        Accept();
        next_verify_check = std::min(next_verify_check, MonoClock::now() + options_.verify_timeout);
        continue;
      }
      std::shared_ptr<Conn> c;
      {
        // epoll_event is packed on x86-64: find() takes a reference, which
        // must not bind to the misaligned data.u64 (UBSan); copy it out.
        const uint64_t token = events[i].data.u64;
        absl::MutexLock lock(&mu_);
        auto it = conns_.find(token);
        if (it == conns_.end()) continue;
        c = it->second;
      }
      absl::Status st;
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) st = HandleReadable(c.get());
      if (st.ok() && (events[i].events & EPOLLOUT)) st = FlushOut(c.get());
      if (!st.ok()) CloseConn(c, st);
    }
    Deadline next = table_.ExpireDue(MonoClock::now());
    if (MonoClock::now() >= next_verify_check)
      next_verify_check = CloseUnverified(MonoClock::now());
    next = std::min(next, next_verify_check);
    // Replies queued by callers, by the frames above or by expiry.
    std::vector<std::shared_ptr<Conn>> pending;
    {
      absl::MutexLock lock(&mu_);
      for (auto& [id, c] : conns_) {
        if (!c->out.empty() && !c->want_out) pending.push_back(c);
      }
    }
    for (auto& c : pending) {
      absl::Status st = FlushOut(c.get());
      if (!st.ok()) CloseConn(c, st);
    }
    if (next == Deadline::max()) {
      timeout_ms = -1;
    } else {
      auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - MonoClock::now());
      timeout_ms = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 60'000));
    }
  }
}

}  // namespace pdserve::transport
