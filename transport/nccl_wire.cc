#include "transport/nccl_wire.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace pdserve::transport::internal {
namespace {

void Put(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t Get(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

absl::Status WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("send on the NCCL control connection", errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r == 0) return absl::UnavailableError("the peer closed the NCCL control connection");
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("recv on the NCCL control connection", errno);
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

}  // namespace

NcclFrame MakeBeginFrame(const TransferSecret& secret, TransferId xfer, int32_t n_layers,
                         MonoClock::time_point deadline) {
  NcclFrame begin;
  begin.type = NcclFrameType::kBegin;
  begin.xfer = xfer.value;
  begin.arg0 = n_layers;
  begin.arg1 = std::clamp<int64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - MonoClock::now()).count(), 0,
      std::numeric_limits<uint32_t>::max());
  const AuthTag tag =
      BeginTag(secret, xfer, static_cast<uint32_t>(n_layers), static_cast<uint32_t>(begin.arg1));
  begin.payload.assign(reinterpret_cast<const char*>(tag.data()), tag.size());
  return begin;
}

absl::Status WriteNcclFrame(int fd, const NcclFrame& f) {
  if (f.payload.size() > kNcclMaxPayload) return absl::InvalidArgumentError("NCCL frame too large");
  uint8_t h[kNcclHeaderBytes] = {};
  Put(h, kNcclMagic, 4);
  h[4] = static_cast<uint8_t>(f.type);
  Put(h + 8, f.xfer, 8);
  Put(h + 16, static_cast<uint64_t>(f.arg0), 8);
  Put(h + 24, static_cast<uint64_t>(f.arg1), 8);
  Put(h + 32, f.payload.size(), 4);
  std::string buf(reinterpret_cast<const char*>(h), sizeof(h));
  buf += f.payload;  // one send: header and payload in one segment
  return WriteAll(fd, buf.data(), buf.size());
}

absl::Status ReadNcclFrame(int fd, NcclFrame* f, uint32_t max_payload) {
  uint8_t h[kNcclHeaderBytes];
  if (absl::Status s = ReadAll(fd, h, sizeof(h)); !s.ok()) return s;
  if (Get(h, 4) != kNcclMagic) return absl::InvalidArgumentError("bad NCCL control frame magic");
  const uint8_t type = h[4];
  if (type < 1 || type > static_cast<uint8_t>(NcclFrameType::kReleased)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown NCCL control frame type ", type));
  }
  f->type = static_cast<NcclFrameType>(type);
  f->xfer = Get(h + 8, 8);
  f->arg0 = static_cast<int64_t>(Get(h + 16, 8));
  f->arg1 = static_cast<int64_t>(Get(h + 24, 8));
  const uint64_t len = Get(h + 32, 4);
  if (len > kNcclMaxPayload || len > max_payload) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL control payload of ", len, " bytes"));
  }
  f->payload.resize(len);
  return len > 0 ? ReadAll(fd, f->payload.data(), len) : absl::OkStatus();
}

absl::StatusOr<UniqueFd> ConnectBlocking(const HostPort& peer, int timeout_ms) {
  absl::StatusOr<UniqueFd> fd = StartConnectTcp(peer);
  if (!fd.ok()) return fd.status();
  pollfd p{fd->get(), POLLOUT, 0};
  const int n = ::poll(&p, 1, timeout_ms);
  if (n == 0) {
    return absl::UnavailableError(absl::StrCat("connecting to ",
                                               FormatHostPort(peer.host, peer.port),
                                               ": timed out after ", timeout_ms, " ms"));
  }
  if (n < 0) return ErrnoStatus("poll", errno);
  if (absl::Status s = SocketError(
          fd->get(), absl::StrCat("connecting to ", FormatHostPort(peer.host, peer.port)));
      !s.ok()) {
    return s;
  }
  const int flags = ::fcntl(fd->get(), F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd->get(), F_SETFL, flags & ~O_NONBLOCK) < 0) {
    return ErrnoStatus("fcntl", errno);
  }
  TuneSocket(fd->get(), 0);
  return fd;
}

}  // namespace pdserve::transport::internal
