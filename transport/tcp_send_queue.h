// A TCP connection's outgoing frames, in order, and how they become
// sendmsg() iovecs. Layer frames borrow the caller's block views: nothing is
// copied on the way to the socket, unless a transfer ends in the middle of a
// frame, when the unsent rest is copied once (MakeRestOwned) so the caller's
// blocks are released at once while the stream stays in sync.
//
// Not thread-safe: TcpKvSender guards a queue with its mutex, and uses the
// frames of a batch outside the lock only while it holds the connection's
// "writing" flag (nobody drops frames meanwhile).
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "transport/kv_transport.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport::internal {

struct OutFrame {
  FrameHeader header;
  Deadline deadline = Deadline::max();  // Begin: the budget is computed when encoded
  TransferSecret secret;                // Begin: keys its tag (computed when encoded)
  std::array<uint8_t, kFrameHeaderBytes> header_bytes{};
  bool encoded = false;
  std::vector<uint8_t> table;          // Layer: little-endian u64 block sizes
  std::vector<ConstBlockView> blocks;  // Layer: the caller's views
  std::string payload;                 // Trailer bytes; or the rest of the frame
  bool rest_owned = false;             // payload holds every unsent byte
  size_t total = 0;                    // frame bytes, header included
  size_t sent = 0;
  int64_t data_bytes = 0;  // Layer: block bytes, for stats

  TransferId xfer() const { return TransferId{header.xfer_id}; }
  size_t max_segments() const { return rest_owned ? 1 : 3 + blocks.size(); }

  // Calls fn(data, bytes) for each piece of the frame, in wire order.
  template <typename Fn>
  void ForEachSegment(Fn&& fn) const {
    if (rest_owned) {
      fn(payload.data(), payload.size());
      return;
    }
    fn(header_bytes.data(), header_bytes.size());
    if (!table.empty()) fn(table.data(), table.size());
    for (const ConstBlockView& b : blocks) fn(b.data, b.bytes);
    if (!payload.empty()) fn(payload.data(), payload.size());
  }

  // Encodes the header: Begin's remaining budget as of now and its tag, the
  // payload crc when checksum. Reads the caller's views (for the crc).
  void Encode(bool checksum, Deadline now);
  // Copies the unsent bytes; the views are not read again.
  void MakeRestOwned();
};

std::unique_ptr<OutFrame> BeginFrame(TransferId xfer, const TransferSecret& secret,
                                     int32_t n_layers, Deadline deadline);
std::unique_ptr<OutFrame> LayerFrame(TransferId xfer, int32_t layer,
                                     absl::Span<const ConstBlockView> blocks);
// The trailer followed by its tag.
std::unique_ptr<OutFrame> TrailerFrame(TransferId xfer, const TransferSecret& secret,
                                       std::string trailer);
// why travels in arg0 (0 on old senders: read as kAborted).
std::unique_ptr<OutFrame> AbortFrame(TransferId xfer, absl::StatusCode why);

class SendQueue {
 public:
  bool empty() const { return frames_.empty(); }
  size_t size() const { return frames_.size(); }
  void Push(std::unique_ptr<OutFrame> f) { frames_.push_back(std::move(f)); }
  void Clear() { frames_.clear(); }

  // The frames for one sendmsg, from the front: at most max_frames, and no
  // more segments than max_iov (at least one frame).
  std::vector<OutFrame*> NextBatch(size_t max_frames, size_t max_iov) const;

  // Appends iovecs for the unsent bytes of batch (a prefix of the queue),
  // at most max_iov of them; returns their byte count.
  static size_t Gather(absl::Span<OutFrame* const> batch, size_t max_iov, std::vector<iovec>* iov);

  // Accounts for n bytes sent: calls done(frame) for each frame completed,
  // then pops it.
  template <typename Fn>
  void Advance(size_t n, Fn&& done) {
    while (n > 0 && !frames_.empty()) {
      OutFrame* f = frames_.front().get();
      size_t rest = f->total - f->sent;
      if (n < rest) {
        f->sent += n;
        return;
      }
      n -= rest;
      done(*f);
      frames_.pop_front();
    }
  }

  // Removes xfer's frames that have not started, except its Begin when
  // keep_begin; a started frame stays, owning its rest. Returns the number
  // of frames removed.
  int Drop(TransferId xfer, bool keep_begin);

 private:
  std::deque<std::unique_ptr<OutFrame>> frames_;
};

}  // namespace pdserve::transport::internal
