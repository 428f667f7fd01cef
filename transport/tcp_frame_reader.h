// Reads whole small frames (header, then a bounded payload) from a
// non-blocking socket, across as many partial reads as the socket needs.
// The sender uses it for the receiver's Ready/Ack/Nack; layer data never
// goes through it (the receiver reads that straight into the posted views).
#pragma once

#include <array>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport::internal {

struct SmallFrame {
  FrameHeader header;
  std::string payload;
};

class SmallFrameReader {
 public:
  // The next complete frame; nullopt when the socket has nothing more right
  // now. Errors: Unavailable when the peer closed or reset the connection,
  // InvalidArgument/DataLoss for a malformed or corrupt frame.
  absl::StatusOr<std::optional<SmallFrame>> Next(int fd, const WireLimits& limits);

 private:
  std::array<uint8_t, kFrameHeaderBytes> header_{};
  size_t header_got_ = 0;
  bool in_payload_ = false;
  SmallFrame frame_;
  size_t payload_got_ = 0;
};

}  // namespace pdserve::transport::internal
