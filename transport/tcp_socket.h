// Thin POSIX socket and epoll helpers for the tcp backend. Every call that
// can fail returns absl::Status with the errno text.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pdserve::transport::internal {

// Owns a file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset();

 private:
  int fd_ = -1;
};

struct HostPort {
  std::string host;
  uint16_t port = 0;
};

// "host:port" or "[v6addr]:port".
absl::StatusOr<HostPort> ParseHostPort(const std::string& endpoint);
std::string FormatHostPort(const std::string& host, uint16_t port);

// A non-blocking listening socket; port 0 picks a free one.
absl::StatusOr<UniqueFd> ListenTcp(const std::string& host, uint16_t port, int backlog);
absl::StatusOr<uint16_t> LocalPort(int fd);
// A loopback port that was free a moment ago (for a child process to bind:
// someone may take it first, so callers retry on a clash); 0 if none.
int FreeLoopbackPort();

// Resolves host (blocking getaddrinfo) and starts a non-blocking connect;
// completion shows up as EPOLLOUT, then SocketError() tells the outcome.
absl::StatusOr<UniqueFd> StartConnectTcp(const HostPort& peer);
// The pending error on a socket (SO_ERROR) as a Status.
absl::Status SocketError(int fd, const std::string& what);

// TCP_NODELAY (latency of small control frames), and SO_SNDBUF/SO_RCVBUF when
// buffer_bytes > 0 (one layer in flight without stalls).
void TuneSocket(int fd, int buffer_bytes);

absl::Status ErrnoStatus(const std::string& what, int err);

// epoll plus an eventfd so other threads can wake the loop.
class Poller {
 public:
  static absl::StatusOr<Poller> Create();
  Poller(Poller&&) = default;
  Poller& operator=(Poller&&) = default;

  absl::Status Add(int fd, uint32_t events, uint64_t token);
  absl::Status Modify(int fd, uint32_t events, uint64_t token);
  void Remove(int fd);
  // Thread-safe. Makes the next (or the current) Wait return.
  void Wake();
  // Returns the number of events, 0 on timeout or wake-up. timeout_ms -1
  // waits forever. Wake-ups are consumed internally (token kWakeToken).
  int Wait(epoll_event* events, int max_events, int timeout_ms);

  static constexpr uint64_t kWakeToken = ~uint64_t{0};

 private:
  Poller() = default;
  UniqueFd epoll_;
  UniqueFd wake_;
};

}  // namespace pdserve::transport::internal
