#include "transport/tcp_frame_reader.h"

#include <sys/socket.h>

#include <cerrno>
#include <utility>

#include "transport/tcp_socket.h"

namespace pdserve::transport::internal {

absl::StatusOr<std::optional<SmallFrame>> SmallFrameReader::Next(int fd, const WireLimits& limits) {
  while (true) {
    ssize_t n;
    if (!in_payload_) {
      n = ::recv(fd, header_.data() + header_got_, kFrameHeaderBytes - header_got_, 0);
    } else {
      n = ::recv(fd, frame_.payload.data() + payload_got_, frame_.payload.size() - payload_got_, 0);
    }
    if (n == 0) return absl::UnavailableError("the peer closed the connection");
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return std::nullopt;
      return ErrnoStatus("recv", errno);
    }
    if (!in_payload_) {
      header_got_ += n;
      if (header_got_ < kFrameHeaderBytes) continue;
      header_got_ = 0;
      absl::StatusOr<FrameHeader> h = DecodeFrameHeader(header_.data(), limits);
      if (!h.ok()) return h.status();
      frame_.header = *h;
      frame_.payload.assign(h->payload_len, '\0');
      payload_got_ = 0;
      if (h->payload_len > 0) {
        in_payload_ = true;
        continue;
      }
    } else {
      payload_got_ += n;
      if (payload_got_ < frame_.payload.size()) continue;
      in_payload_ = false;
    }
    if ((frame_.header.flags & kFlagPayloadCrc) &&
        Crc32(0, frame_.payload.data(), frame_.payload.size()) != frame_.header.payload_crc) {
      return absl::DataLossError("frame payload checksum mismatch");
    }
    return std::exchange(frame_, SmallFrame{});
  }
}

}  // namespace pdserve::transport::internal
