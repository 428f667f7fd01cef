// The tcp backend's wire format: every message is a frame with a fixed
// 40-byte little-endian header, then payload_len bytes.
//
//   offset size field
//        0    4 magic 'PDKV'
//        4    2 version (kWireVersion)
//        6    1 type (FrameType)
//        7    1 flags (kFlagPayloadCrc: payload_crc is set)
//        8    8 xfer_id
//       16    4 arg0: n_layers (Begin), layer (Layer), absl::StatusCode (Nack)
//       20    4 arg1: deadline budget in ms (Begin), n_blocks (Layer)
//       24    8 payload_len
//       32    4 payload_crc: zlib crc32 of the payload, 0 unless flagged
//       36    4 header_crc: crc32 of bytes 0..35, always set
//
// Payloads: Begin = its 32-byte HMAC-SHA256 tag over (xfer_id, n_layers,
// budget ms) keyed by the transfer's secret; Layer = n_blocks little-endian
// u64 block sizes, then the blocks' bytes back to back; Trailer = the
// caller's trailer bytes, then their 32-byte tag (transport/transfer_auth.h
// has both tags); Nack = a human-readable message. Abort, Ready and Ack
// carry none. Version 2 added the tags (version 1 had none).
// Sender -> receiver: Begin, Layer, Trailer, Abort.
// Receiver -> sender: Ready, Ack, Nack.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::transport::internal {

inline constexpr uint32_t kFrameMagic = 0x564B4450;  // "PDKV" as little-endian bytes
inline constexpr uint16_t kWireVersion = 2;
inline constexpr size_t kFrameHeaderBytes = 40;
inline constexpr uint8_t kFlagPayloadCrc = 1;

enum class FrameType : uint8_t {
  kBegin = 1,
  kLayer = 2,
  kTrailer = 3,
  kAbort = 4,
  kReady = 5,
  kAck = 6,
  kNack = 7,
};

struct FrameHeader {
  FrameType type = FrameType::kBegin;
  uint8_t flags = 0;
  uint64_t xfer_id = 0;
  uint32_t arg0 = 0;
  uint32_t arg1 = 0;
  uint64_t payload_len = 0;
  uint32_t payload_crc = 0;
};

// Bounds a peer's header must respect; anything outside them is hostile or
// corrupt and closes the connection.
struct WireLimits {
  uint32_t max_layers = 4096;
  uint32_t max_blocks_per_layer = 1 << 16;
  uint64_t max_layer_bytes = uint64_t{1} << 30;
  uint64_t max_trailer_bytes = 1 << 20;  // the caller's bytes, tag not counted
  uint64_t max_message_bytes = 4096;     // Nack text
};

const char* FrameTypeName(FrameType type);

// Writes the header, header_crc included.
void EncodeFrameHeader(const FrameHeader& header, uint8_t out[kFrameHeaderBytes]);

// Parses and validates a header: magic, version, header checksum, known type
// and flags, and per-type bounds from limits (a Layer's payload can hold its
// size table, Begin and Trailer payloads hold their tag). Errors are
// InvalidArgument or DataLoss (bad header checksum) with a message for the
// log. Fuzzed by tests/fuzz/kv_frame_fuzz.cc.
absl::StatusOr<FrameHeader> DecodeFrameHeader(const uint8_t in[kFrameHeaderBytes],
                                              const WireLimits& limits);

// A Layer frame's block-size table (h.arg1 little-endian u64 at table) as
// sizes; they must add up to the frame's data bytes (payload_len minus the
// table) exactly. InvalidArgument otherwise. h passed DecodeFrameHeader.
absl::StatusOr<std::vector<uint64_t>> ParseBlockTable(const FrameHeader& h, const uint8_t* table);

// Splits a Begin or Trailer payload into its body (left in *payload) and
// its trailing tag. InvalidArgument if it is shorter than a tag.
absl::Status SplitTag(std::string* payload, std::array<uint8_t, 32>* tag);

// zlib crc32, continued from crc (0 to start), for any length.
uint32_t Crc32(uint32_t crc, const void* data, size_t bytes);

// Encodes a frame with a small payload (control frames, trailer) into one
// buffer: header then payload.
std::string EncodeSmallFrame(FrameHeader header, const std::string& payload, bool checksum);

void PutU64Le(uint64_t v, uint8_t* out);
uint64_t GetU64Le(const uint8_t* in);

}  // namespace pdserve::transport::internal
