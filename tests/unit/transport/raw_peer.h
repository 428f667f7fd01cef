// Raw-socket peers for the tcp backend tests: a blocking socket that speaks
// (or abuses) the wire format, and a listening fake receiver.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/transport/test_util.h"
#include "transport/tcp_sender.h"
#include "transport/tcp_socket.h"
#include "transport/tcp_wire.h"
#include "transport/transfer_auth.h"

namespace pdserve::transport::testing {

using internal::EncodeFrameHeader;
using internal::EncodeSmallFrame;
using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;

inline void SetTimeouts(int fd) {
  timeval tv{};
  tv.tv_sec = 30;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// A blocking socket speaking (or abusing) the wire format.
class RawPeer {
 public:
  explicit RawPeer(internal::UniqueFd fd) : fd_(std::move(fd)) {
    int flags = fcntl(fd_.get(), F_GETFL, 0);
    fcntl(fd_.get(), F_SETFL, flags & ~O_NONBLOCK);
    SetTimeouts(fd_.get());
  }
  static std::unique_ptr<RawPeer> Connect(const std::string& endpoint) {
    auto hp = internal::ParseHostPort(endpoint);
    EXPECT_TRUE(hp.ok());
    auto fd = internal::StartConnectTcp(*hp);
    EXPECT_TRUE(fd.ok()) << fd.status();
    auto peer = std::make_unique<RawPeer>(std::move(*fd));
    // Wait for the non-blocking connect to finish.
    fd_set w;
    FD_ZERO(&w);
    FD_SET(peer->fd_.get(), &w);
    timeval tv{30, 0};
    select(peer->fd_.get() + 1, nullptr, &w, nullptr, &tv);
    return peer;
  }

  bool Send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_.get(), bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += n;
    }
    return true;
  }
  bool SendFrame(FrameHeader h, const std::string& payload = "", bool checksum = true) {
    return Send(EncodeSmallFrame(h, payload, checksum));
  }
  bool SendBegin(uint64_t xfer, uint32_t n_layers, uint32_t budget_ms = 60000,
                 const TransferSecret& secret = TestSecret());
  bool SendTrailer(uint64_t xfer, const std::string& trailer,
                   const TransferSecret& secret = TestSecret());

  // Reads one frame, or an error on EOF / reset / timeout.
  absl::StatusOr<std::pair<FrameHeader, std::string>> ReadFrame() {
    uint8_t header[kFrameHeaderBytes];
    if (!ReadExactly(header, sizeof(header))) return absl::UnavailableError("closed");
    auto h = internal::DecodeFrameHeader(header, internal::WireLimits{});
    if (!h.ok()) return h.status();
    std::string payload(h->payload_len, '\0');
    if (!ReadExactly(payload.data(), payload.size())) return absl::UnavailableError("closed");
    return std::make_pair(*h, payload);
  }

  // True once the other side closed the connection (EOF or reset); false on
  // timeout. Discards anything it sent before.
  bool WaitClosed() {
    char buf[4096];
    while (true) {
      ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

  int fd() const { return fd_.get(); }

 private:
  bool ReadExactly(void* dst, size_t bytes) {
    size_t got = 0;
    while (got < bytes) {
      ssize_t n = ::recv(fd_.get(), static_cast<char*>(dst) + got, bytes - got, 0);
      if (n <= 0) return false;
      got += n;
    }
    return true;
  }

  internal::UniqueFd fd_;
};

inline FrameHeader Begin(uint64_t xfer, uint32_t n_layers, uint32_t budget_ms = 60000) {
  FrameHeader h;
  h.type = FrameType::kBegin;
  h.xfer_id = xfer;
  h.arg0 = n_layers;
  h.arg1 = budget_ms;
  return h;
}

// A Begin frame with its tag (keyed by secret), as bytes ready to send.
inline std::string BeginBytes(uint64_t xfer, uint32_t n_layers, uint32_t budget_ms = 60000,
                              const TransferSecret& secret = TestSecret(), bool checksum = false) {
  AuthTag tag = BeginTag(secret, TransferId{xfer}, n_layers, budget_ms);
  return EncodeSmallFrame(Begin(xfer, n_layers, budget_ms),
                          std::string(reinterpret_cast<const char*>(tag.data()), tag.size()),
                          checksum);
}

// A Trailer frame: the bytes, then their tag (keyed by secret).
inline std::string TrailerBytes(uint64_t xfer, const std::string& trailer,
                                const TransferSecret& secret = TestSecret(), bool checksum = true) {
  AuthTag tag = TrailerTag(secret, TransferId{xfer}, trailer);
  FrameHeader h;
  h.type = FrameType::kTrailer;
  h.xfer_id = xfer;
  return EncodeSmallFrame(
      h, trailer + std::string(reinterpret_cast<const char*>(tag.data()), tag.size()), checksum);
}

inline FrameHeader Simple(FrameType type, uint64_t xfer) {
  FrameHeader h;
  h.type = type;
  h.xfer_id = xfer;
  return h;
}

// A Layer frame for `blocks`, as bytes ready to send.
inline std::string LayerFrame(uint64_t xfer, uint32_t layer, const std::vector<std::string>& blocks,
                              bool checksum = true) {
  std::string payload(blocks.size() * 8, '\0');
  for (size_t i = 0; i < blocks.size(); ++i) {
    internal::PutU64Le(blocks[i].size(), reinterpret_cast<uint8_t*>(payload.data()) + 8 * i);
  }
  for (const auto& b : blocks) payload += b;
  FrameHeader h;
  h.type = FrameType::kLayer;
  h.xfer_id = xfer;
  h.arg0 = layer;
  h.arg1 = static_cast<uint32_t>(blocks.size());
  return EncodeSmallFrame(h, payload, checksum);
}

// Expects the next frame from the receiver to be `type` for xfer.
inline void ExpectFrame(RawPeer& peer, FrameType type, uint64_t xfer,
                        absl::StatusCode code = absl::StatusCode::kOk) {
  auto f = peer.ReadFrame();
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->first.type, type) << internal::FrameTypeName(f->first.type) << ": " << f->second;
  EXPECT_EQ(f->first.xfer_id, xfer);
  if (type == FrameType::kNack) {
    EXPECT_EQ(static_cast<absl::StatusCode>(f->first.arg0), code);
  }
}

inline TcpSenderOptions ChecksummedSender() {
  TcpSenderOptions options;
  options.checksum = true;
  return options;
}

class FakeReceiver {
 public:
  FakeReceiver() {
    auto fd = internal::ListenTcp("127.0.0.1", 0, 4);
    EXPECT_TRUE(fd.ok());
    listen_ = std::move(*fd);
    endpoint_ = internal::FormatHostPort("127.0.0.1", *internal::LocalPort(listen_.get()));
  }
  const std::string& endpoint() const { return endpoint_; }
  std::unique_ptr<RawPeer> Accept() {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(listen_.get(), &r);
    timeval tv{30, 0};
    if (select(listen_.get() + 1, &r, nullptr, nullptr, &tv) <= 0) return nullptr;
    int fd = ::accept(listen_.get(), nullptr, nullptr);
    if (fd < 0) return nullptr;
    return std::make_unique<RawPeer>(internal::UniqueFd(fd));
  }

 private:
  internal::UniqueFd listen_;
  std::string endpoint_;
};

inline bool RawPeer::SendBegin(uint64_t xfer, uint32_t n_layers, uint32_t budget_ms,
                               const TransferSecret& secret) {
  return Send(BeginBytes(xfer, n_layers, budget_ms, secret));
}
inline bool RawPeer::SendTrailer(uint64_t xfer, const std::string& trailer,
                                 const TransferSecret& secret) {
  return Send(TrailerBytes(xfer, trailer, secret));
}

}  // namespace pdserve::transport::testing
