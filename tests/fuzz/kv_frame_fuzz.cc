// libFuzzer target for everything the KV receiver parses from a peer: the
// 40-byte frame header (DecodeFrameHeader), a Layer's block-size table
// (ParseBlockTable), the tags of Begin and Trailer (SplitTag, then the
// HMAC check), and the receiver state machine those frames drive
// (ReceiveTable), the way TcpKvReceiver drives it.
//
// Input: a sequence of records, each one control byte then a frame:
//   control bits 0-1  the sender link (0..3)
//           bit 2     Post transfer (bits 4-5) first, with the known secret
//           bit 3     Cancel transfer (bits 4-5) first
//           bit 6     replace a Begin's or Trailer's tag with the right one
//           bit 7     recompute the header checksum (to get past it)
//   frame: 40 header bytes, then payload_len bytes (as many as remain).
// A frame the receiver would close the connection for closes the link here
// (LinkClosed). Oracle, besides ASan/UBSan and the table's own CHECKs:
// every accepted Post's callback runs exactly once, and never writes past
// its views (ASan).
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "transport/receive_table.h"
#include "transport/tcp_wire.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {
namespace {

using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;

constexpr int kSlots = 4;  // transfer ids 0..3 can be posted
constexpr int kPostLayers = 2;
constexpr int kPostBlocks = 2;
constexpr size_t kBlockBytes = 16;

class NullSink : public internal::ReplySink {
 public:
  void Reply(internal::LinkId, TransferId, internal::ReplyKind, const absl::Status&) override {}
  void WakeForDeadline() override {}
};

struct Slot {
  // (layer, block, bytes), with a guard block each side for ASan-free
  // detection of stray writes: they must stay untouched.
  std::array<uint8_t, (kPostLayers * kPostBlocks + 2) * kBlockBytes> bytes{};
  int posts = 0;  // accepted Posts
  int calls = 0;  // callbacks run

  std::vector<std::vector<BlockView>> Views() {
    std::vector<std::vector<BlockView>> layers(kPostLayers);
    for (int l = 0; l < kPostLayers; ++l) {
      for (int b = 0; b < kPostBlocks; ++b) {
        layers[l].push_back({bytes.data() + (1 + l * kPostBlocks + b) * kBlockBytes, kBlockBytes});
      }
    }
    return layers;
  }
  bool GuardsIntact() const {
    for (size_t i = 0; i < kBlockBytes; ++i) {
      if (bytes[i] != 0 || bytes[bytes.size() - 1 - i] != 0) return false;
    }
    return true;
  }
};

void PutTag(const internal::FrameHeader& h, const TransferSecret& secret, std::string* payload) {
  AuthTag tag;
  std::string body = *payload;
  if (!internal::SplitTag(&body, &tag).ok()) return;
  tag = h.type == FrameType::kBegin ? BeginTag(secret, TransferId{h.xfer_id}, h.arg0, h.arg1)
                                    : TrailerTag(secret, TransferId{h.xfer_id}, body);
  std::memcpy(payload->data() + body.size(), tag.data(), tag.size());
}

}  // namespace
}  // namespace pdserve::transport

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pdserve::transport;  // NOLINT: a fuzz entry point
  using pdserve::MonoClock;
  static const TransferSecret secret = *TransferSecret::FromBytes("kv-fuzz-secret-1");
  internal::WireLimits limits;
  limits.max_layers = 8;
  limits.max_blocks_per_layer = 8;
  limits.max_layer_bytes = 4096;
  limits.max_trailer_bytes = 256;
  internal::ReceiveTableOptions options;
  options.max_unposted = 8;
  options.max_unposted_per_link = 3;
  options.max_remembered = 8;
  options.max_finished_ids = 8;

  NullSink sink;
  internal::TransferCounters counters;
  std::array<Slot, kSlots> slots;
  auto table = std::make_unique<internal::ReceiveTable>(&sink, options, &counters);

  size_t pos = 0;
  while (pos + 1 + kFrameHeaderBytes <= size) {
    const uint8_t control = data[pos++];
    const internal::LinkId link = control & 3;
    const int slot = (control >> 4) & 3;
    if (control & 4) {
      Slot* s = &slots[slot];
      absl::Status posted =
          table->Post(TransferId{static_cast<uint64_t>(slot)}, secret, s->Views(),
                      MonoClock::now() + std::chrono::hours(1),
                      [s](absl::Status, std::string, ReceiveTiming) { ++s->calls; });
      if (posted.ok()) ++s->posts;
    }
    if (control & 8) table->Cancel(TransferId{static_cast<uint64_t>(slot)}).IgnoreError();

    uint8_t header[kFrameHeaderBytes];
    std::memcpy(header, data + pos, kFrameHeaderBytes);
    pos += kFrameHeaderBytes;
    if (control & 0x80) {
      const uint32_t crc = internal::Crc32(0, header, 36);
      for (int i = 0; i < 4; ++i) header[36 + i] = static_cast<uint8_t>(crc >> (8 * i));
    }
    absl::StatusOr<FrameHeader> h = internal::DecodeFrameHeader(header, limits);
    if (!h.ok()) {
      table->LinkClosed(link, h.status());
      continue;
    }
    if (h->payload_len > size - pos) {  // the peer vanished mid-frame
      table->LinkClosed(link, absl::UnavailableError("truncated"));
      break;
    }
    std::string payload(reinterpret_cast<const char*>(data + pos), h->payload_len);
    pos += h->payload_len;
    const absl::Status crc_status =
        (h->flags & internal::kFlagPayloadCrc) &&
                internal::Crc32(0, payload.data(), payload.size()) != h->payload_crc
            ? absl::DataLossError("checksum mismatch")
            : absl::OkStatus();
    const TransferId xfer{h->xfer_id};
    switch (h->type) {
      case FrameType::kBegin:
      case FrameType::kTrailer: {
        if (control & 0x40) PutTag(*h, secret, &payload);
        AuthTag tag;
        if (!internal::SplitTag(&payload, &tag).ok()) std::abort();  // the decoder allowed it
        if (h->type == FrameType::kBegin) {
          table->Announce(link, xfer, static_cast<int32_t>(h->arg0),
                          MonoClock::now() + std::chrono::milliseconds(h->arg1),
                          BeginProof{h->arg1, tag});
        } else if (!table->Trailer(link, xfer, payload, tag, crc_status)) {
          table->LinkClosed(link, absl::InvalidArgumentError("trailer not open"));
        }
        break;
      }
      case FrameType::kLayer: {
        absl::StatusOr<std::vector<uint64_t>> sizes =
            internal::ParseBlockTable(*h, reinterpret_cast<const uint8_t*>(payload.data()));
        if (!sizes.ok()) {
          table->LinkClosed(link, sizes.status());
          break;
        }
        std::string error;
        const int32_t layer = static_cast<int32_t>(h->arg0);
        internal::LayerVerdict v = table->BeginLayer(link, xfer, layer, *sizes, &error);
        if (v == internal::LayerVerdict::kProtocolError) {
          table->LinkClosed(link, absl::InvalidArgumentError(error));
          break;
        }
        if (v == internal::LayerVerdict::kWrite) {
          // As the receiver does: the data bytes in order into the views.
          const char* src = payload.data() + uint64_t{h->arg1} * 8;
          if (const std::vector<BlockView>* views = table->AcquireWrite(xfer, layer)) {
            for (const BlockView& view : *views) {
              std::memcpy(view.data, src, view.bytes);
              src += view.bytes;
            }
            table->ReleaseWrite(xfer);
          }
          table->EndLayer(link, xfer, layer, crc_status);
        }
        break;
      }
      case FrameType::kAbort:
        table->SenderAborted(link, xfer, static_cast<absl::StatusCode>(h->arg0));
        break;
      default:  // a receiver's frame from a sender
        table->LinkClosed(link, absl::InvalidArgumentError("wrong direction"));
        break;
    }
    if ((control & 0x3C) == 0x3C) table->ExpireDue(MonoClock::now() + std::chrono::hours(2));
  }
  table->Shutdown(absl::CancelledError("done"));
  table.reset();
  for (const Slot& s : slots) {
    if (s.calls != s.posts || !s.GuardsIntact()) std::abort();  // exactly once, in bounds
  }
  return 0;
}
