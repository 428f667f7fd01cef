// The NCCL backend's control channel: one TCP connection per (sender,
// receiver) pair carries the same protocol as the tcp backend (Begin, Ready,
// Layer, Trailer, Abort, Ack, Nack; see transport/README.md) plus the NCCL
// unique id exchange (Hello), while each layer's bytes travel over NCCL.
//
// Frame: a 40-byte little-endian header, then payload_len bytes.
//   magic u32 'PDNC' | type u8 | 3 pad | xfer u64 | arg0 i64 | arg1 i64 |
//   payload_len u32 | 4 pad
//   Hello   (S->R) payload: ncclUniqueId (128 bytes)
//   Begin   (S->R) arg0 n_layers, arg1 deadline budget ms (0..2^32-1),
//                  payload: its 32-byte tag (transport/transfer_auth.h)
//   Layer   (S->R) arg0 layer, payload: u64 block sizes; then NCCL carries
//                  the blocks' bytes back to back (one ncclSend)
//   Trailer (S->R) payload: trailer bytes, then their 32-byte tag
//   Abort   (S->R)
//   Ready, Ack (R->S); Nack (R->S) arg0 absl::StatusCode, payload message
// The IPC backend (transport/ipc_sender.h) uses the same frames: its Hello
// carries the sender's host identity instead of an NCCL id, its Layer
// payload (region u32, pad u32, offset u64, bytes u64) per block, and it adds
// Handle and Released.
// Sockets are blocking; each side has a reader thread per connection, and
// writes are serialized by the writer's mutex (transport/control_link.h, the
// connection code both backends share). The receiver caps its connections,
// and joins a sender's NCCL communicator only once one of the sender's
// Begins proved its transfer's secret (or drops it after a timeout).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "transport/tcp_socket.h"
#include "transport/transfer_auth.h"

namespace pdserve::transport::internal {

inline constexpr uint32_t kNcclMagic = 0x434E4450;  // "PDNC"
inline constexpr size_t kNcclHeaderBytes = 40;
inline constexpr uint32_t kNcclMaxPayload = 64 << 20;
inline constexpr char kNcclScheme[] = "nccl:";

enum class NcclFrameType : uint8_t {
  kHello = 1,
  kBegin = 2,
  kLayer = 3,
  kTrailer = 4,
  kAbort = 5,
  kReady = 6,
  kAck = 7,
  kNack = 8,
  // IPC backend only (transport/ipc_*.h):
  kHandle = 9,     // S->R arg0 region (-1: the link's event), arg1 bytes, payload 64-byte handle
  kReleased = 10,  // R->S after the sender's Abort: the receiver no longer reads its blocks
};

struct NcclFrame {
  NcclFrameType type = NcclFrameType::kHello;
  uint64_t xfer = 0;
  int64_t arg0 = 0;
  int64_t arg1 = 0;
  std::string payload;
};

// The Begin frame of a transfer (NCCL and IPC control links): n_layers, the
// milliseconds left until `deadline` (clamped to uint32), and the tag that
// proves the secret; the receiver matches it with its Post only then.
NcclFrame MakeBeginFrame(const TransferSecret& secret, TransferId xfer, int32_t n_layers,
                         MonoClock::time_point deadline);

// Writes one whole frame (blocking).
absl::Status WriteNcclFrame(int fd, const NcclFrame& frame);
// Reads one whole frame (blocking). Unavailable when the peer closed the
// connection; InvalidArgument for a corrupt header or a payload over
// max_payload (checked before anything is allocated).
absl::Status ReadNcclFrame(int fd, NcclFrame* frame, uint32_t max_payload = kNcclMaxPayload);

// Connects to host:port within timeout_ms; the socket is blocking after.
absl::StatusOr<UniqueFd> ConnectBlocking(const HostPort& peer, int timeout_ms);

}  // namespace pdserve::transport::internal
