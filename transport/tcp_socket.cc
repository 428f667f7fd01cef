#include "transport/tcp_socket.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pdserve::transport::internal {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void UniqueFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

absl::Status ErrnoStatus(const std::string& what, int err) {
  std::string text = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case EPIPE:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
      return absl::UnavailableError(text);
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case ENOBUFS:
      return absl::ResourceExhaustedError(text);
    default:
      return absl::InternalError(text);
  }
}

absl::StatusOr<HostPort> ParseHostPort(const std::string& endpoint) {
  HostPort hp;
  std::string port_text;
  if (!endpoint.empty() && endpoint[0] == '[') {
    size_t close = endpoint.find(']');
    if (close == std::string::npos || close + 1 >= endpoint.size() || endpoint[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("bad endpoint '", endpoint, "'"));
    }
    hp.host = endpoint.substr(1, close - 1);
    port_text = endpoint.substr(close + 2);
  } else {
    size_t colon = endpoint.rfind(':');
    if (colon == std::string::npos || colon == 0 ||
        endpoint.find(':') != colon /* bare IPv6 needs brackets */) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad endpoint '", endpoint, "': want host:port"));
    }
    hp.host = endpoint.substr(0, colon);
    port_text = endpoint.substr(colon + 1);
  }
  uint32_t port = 0;
  if (!absl::SimpleAtoi(port_text, &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in endpoint '", endpoint, "'"));
  }
  hp.port = static_cast<uint16_t>(port);
  return hp;
}

std::string FormatHostPort(const std::string& host, uint16_t port) {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

namespace {

absl::StatusOr<addrinfo*> Resolve(const std::string& host, uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* result = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &result);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve '", host, "': ", ::gai_strerror(rc)));
  }
  return result;
}

}  // namespace

void TuneSocket(int fd, int buffer_bytes) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (buffer_bytes > 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes));
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
  }
}

absl::StatusOr<UniqueFd> ListenTcp(const std::string& host, uint16_t port, int backlog) {
  auto resolved = Resolve(host, port, /*passive=*/true);
  if (!resolved.ok()) return resolved.status();
  addrinfo* list = *resolved;
  absl::Status last = absl::UnavailableError(absl::StrCat("no address for '", host, "'"));
  for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoStatus("socket", errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0) {
      last = ErrnoStatus(absl::StrCat("bind ", FormatHostPort(host, port)), errno);
      continue;
    }
    if (::listen(fd.get(), backlog) < 0) {
      last = ErrnoStatus("listen", errno);
      continue;
    }
    ::freeaddrinfo(list);
    return fd;
  }
  ::freeaddrinfo(list);
  return last;
}

int FreeLoopbackPort() {
  absl::StatusOr<UniqueFd> fd = ListenTcp("127.0.0.1", 0, 1);
  if (!fd.ok()) return 0;
  absl::StatusOr<uint16_t> port = LocalPort(fd->get());
  return port.ok() ? *port : 0;
}

absl::StatusOr<uint16_t> LocalPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
    return ErrnoStatus("getsockname", errno);
  }
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
}

absl::StatusOr<UniqueFd> StartConnectTcp(const HostPort& peer) {
  auto resolved = Resolve(peer.host, peer.port, /*passive=*/false);
  if (!resolved.ok()) return resolved.status();
  addrinfo* list = *resolved;
  absl::Status last = absl::UnavailableError(absl::StrCat("no address for '", peer.host, "'"));
  for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoStatus("socket", errno);
      continue;
    }
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
      last = ErrnoStatus(absl::StrCat("connect ", FormatHostPort(peer.host, peer.port)), errno);
      continue;
    }
    ::freeaddrinfo(list);
    return fd;
  }
  ::freeaddrinfo(list);
  return last;
}

absl::Status SocketError(int fd, const std::string& what) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err == 0) return absl::OkStatus();
  return ErrnoStatus(what, err);
}

absl::StatusOr<Poller> Poller::Create() {
  Poller p;
  p.epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!p.epoll_.valid()) return ErrnoStatus("epoll_create1", errno);
  p.wake_ = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!p.wake_.valid()) return ErrnoStatus("eventfd", errno);
  absl::Status added = p.Add(p.wake_.get(), EPOLLIN, kWakeToken);
  if (!added.ok()) return added;
  return p;
}

absl::Status Poller::Add(int fd, uint32_t events, uint64_t token) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0)
    return ErrnoStatus("epoll_ctl(ADD)", errno);
  return absl::OkStatus();
}

absl::Status Poller::Modify(int fd, uint32_t events, uint64_t token) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) < 0)
    return ErrnoStatus("epoll_ctl(MOD)", errno);
  return absl::OkStatus();
}

void Poller::Remove(int fd) { ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

void Poller::Wake() {
  uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: a wake-up is pending.
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));
}

int Poller::Wait(epoll_event* events, int max_events, int timeout_ms) {
  int n = ::epoll_wait(epoll_.get(), events, max_events, timeout_ms);
  if (n < 0) return 0;  // EINTR: the caller loops anyway
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    if (events[i].data.u64 == kWakeToken) {
      uint64_t count;
      [[maybe_unused]] ssize_t r = ::read(wake_.get(), &count, sizeof(count));
      continue;
    }
    events[kept++] = events[i];
  }
  return kept;
}

}  // namespace pdserve::transport::internal
