#include "transport/tcp_wire.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "transport/transfer_auth.h"

namespace pdserve::transport::internal {

namespace {

void PutU16(uint16_t v, uint8_t* out) {
  out[0] = static_cast<uint8_t>(v);
  out[1] = static_cast<uint8_t>(v >> 8);
}
void PutU32(uint32_t v, uint8_t* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t GetU16(const uint8_t* in) { return static_cast<uint16_t>(in[0] | (in[1] << 8)); }
uint32_t GetU32(const uint8_t* in) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | in[i];
  return v;
}

}  // namespace

void PutU64Le(uint64_t v, uint8_t* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetU64Le(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | in[i];
  return v;
}

uint32_t Crc32(uint32_t crc, const void* data, size_t bytes) {
  return static_cast<uint32_t>(
      crc32_z(crc, static_cast<const Bytef*>(data), static_cast<z_size_t>(bytes)));
}

const char* FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kBegin:
      return "Begin";
    case FrameType::kLayer:
      return "Layer";
    case FrameType::kTrailer:
      return "Trailer";
    case FrameType::kAbort:
      return "Abort";
    case FrameType::kReady:
      return "Ready";
    case FrameType::kAck:
      return "Ack";
    case FrameType::kNack:
      return "Nack";
  }
  return "Unknown";
}

void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]) {
  PutU32(kFrameMagic, out + 0);
  PutU16(kWireVersion, out + 4);
  out[6] = static_cast<uint8_t>(h.type);
  out[7] = h.flags;
  PutU64Le(h.xfer_id, out + 8);
  PutU32(h.arg0, out + 16);
  PutU32(h.arg1, out + 20);
  PutU64Le(h.payload_len, out + 24);
  PutU32(h.payload_crc, out + 32);
  PutU32(Crc32(0, out, 36), out + 36);
}

absl::StatusOr<FrameHeader> DecodeFrameHeader(const uint8_t in[kFrameHeaderBytes],
                                              const WireLimits& limits) {
  uint32_t magic = GetU32(in);
  if (magic != kFrameMagic) {
    return absl::InvalidArgumentError(absl::StrCat("bad frame magic 0x", absl::Hex(magic)));
  }
  uint16_t version = GetU16(in + 4);
  if (version != kWireVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported wire version ", version, " (want ", kWireVersion, ")"));
  }
  if (GetU32(in + 36) != Crc32(0, in, 36)) {
    return absl::DataLossError("frame header checksum mismatch");
  }
  FrameHeader h;
  uint8_t type = in[6];
  if (type < static_cast<uint8_t>(FrameType::kBegin) ||
      type > static_cast<uint8_t>(FrameType::kNack)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown frame type ", type));
  }
  h.type = static_cast<FrameType>(type);
  h.flags = in[7];
  if ((h.flags & ~kFlagPayloadCrc) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown frame flags 0x", absl::Hex(h.flags)));
  }
  h.xfer_id = GetU64Le(in + 8);
  h.arg0 = GetU32(in + 16);
  h.arg1 = GetU32(in + 20);
  h.payload_len = GetU64Le(in + 24);
  h.payload_crc = GetU32(in + 32);

  const char* name = FrameTypeName(h.type);
  auto bad = [&](auto... what) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " frame for transfer ", h.xfer_id, ": ", what...));
  };
  switch (h.type) {
    case FrameType::kBegin:
      if (h.arg0 == 0 || h.arg0 > limits.max_layers) return bad("n_layers ", h.arg0);
      if (h.payload_len != kAuthTagBytes) return bad("payload of ", h.payload_len, " bytes");
      break;
    case FrameType::kLayer: {
      if (h.arg0 >= limits.max_layers) return bad("layer ", h.arg0);
      if (h.arg1 == 0 || h.arg1 > limits.max_blocks_per_layer) return bad("n_blocks ", h.arg1);
      uint64_t table = uint64_t{h.arg1} * 8;
      if (h.payload_len < table || h.payload_len - table > limits.max_layer_bytes) {
        return bad("payload of ", h.payload_len, " bytes for ", h.arg1, " blocks");
      }
      break;
    }
    case FrameType::kTrailer:
      if (h.payload_len < kAuthTagBytes ||
          h.payload_len - kAuthTagBytes > limits.max_trailer_bytes) {
        return bad("payload of ", h.payload_len, " bytes");
      }
      break;
    case FrameType::kNack:
      if (h.arg0 == 0 || h.arg0 > 16) return bad("status code ", h.arg0);
      if (h.payload_len > limits.max_message_bytes) return bad("payload of ", h.payload_len);
      break;
    case FrameType::kAbort:
      if (h.arg0 > 16) return bad("status code ", h.arg0);
      if (h.payload_len != 0) return bad("payload of ", h.payload_len, " bytes");
      break;
    case FrameType::kReady:
    case FrameType::kAck:
      if (h.payload_len != 0) return bad("payload of ", h.payload_len, " bytes");
      break;
  }
  return h;
}

absl::StatusOr<std::vector<uint64_t>> ParseBlockTable(const FrameHeader& h, const uint8_t* table) {
  const uint64_t table_bytes = uint64_t{h.arg1} * 8;
  if (h.type != FrameType::kLayer || h.payload_len < table_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame for transfer ", h.xfer_id, " has no whole block table"));
  }
  const uint64_t data_bytes = h.payload_len - table_bytes;
  std::vector<uint64_t> sizes(h.arg1);
  uint64_t sum = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    sizes[i] = GetU64Le(table + 8 * i);
    if (sizes[i] > data_bytes - sum) {  // sum <= data_bytes holds here: no overflow
      return absl::InvalidArgumentError(
          absl::StrCat("Layer frame for transfer ", h.xfer_id, ": block sizes exceed the payload"));
    }
    sum += sizes[i];
  }
  if (sum != data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("Layer frame for transfer ", h.xfer_id,
                                                   ": block sizes add up to ", sum,
                                                   ", payload has ", data_bytes));
  }
  return sizes;
}

absl::Status SplitTag(std::string* payload, std::array<uint8_t, 32>* tag) {
  if (payload->size() < tag->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload of ", payload->size(), " bytes has no ", tag->size(), "-byte tag"));
  }
  const size_t body = payload->size() - tag->size();
  std::memcpy(tag->data(), payload->data() + body, tag->size());
  payload->resize(body);
  return absl::OkStatus();
}

std::string EncodeSmallFrame(FrameHeader header, const std::string& payload, bool checksum) {
  header.payload_len = payload.size();
  header.flags = checksum ? kFlagPayloadCrc : 0;
  header.payload_crc = checksum ? Crc32(0, payload.data(), payload.size()) : 0;
  std::string out(kFrameHeaderBytes + payload.size(), '\0');
  EncodeFrameHeader(header, reinterpret_cast<uint8_t*>(out.data()));
  std::memcpy(out.data() + kFrameHeaderBytes, payload.data(), payload.size());
  return out;
}

}  // namespace pdserve::transport::internal
