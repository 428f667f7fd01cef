#include "transport/tcp_send_queue.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include "transport/transfer_auth.h"

namespace pdserve::transport::internal {

void OutFrame::Encode(bool checksum, Deadline now) {
  if (header.type == FrameType::kBegin) {
    auto budget = std::chrono::ceil<std::chrono::milliseconds>(std::max(deadline, now) - now);
    header.arg1 = static_cast<uint32_t>(
        std::min<int64_t>(budget.count(), std::numeric_limits<uint32_t>::max()));
    AuthTag tag = BeginTag(secret, xfer(), header.arg0, header.arg1);
    payload.assign(reinterpret_cast<const char*>(tag.data()), tag.size());
  }
  if (checksum && header.payload_len > 0) {
    uint32_t crc = 0;
    bool first = true;
    ForEachSegment([&](const void* data, size_t bytes) {
      if (first) {
        first = false;  // the header has its own checksum
        return;
      }
      crc = Crc32(crc, data, bytes);
    });
    header.flags = kFlagPayloadCrc;
    header.payload_crc = crc;
  }
  EncodeFrameHeader(header, header_bytes.data());
  encoded = true;
}

void OutFrame::MakeRestOwned() {
  std::string rest;
  rest.reserve(total - sent);
  size_t offset = 0;
  ForEachSegment([&](const void* data, size_t bytes) {
    size_t begin = std::max(offset, sent);
    if (begin < offset + bytes) {
      rest.append(static_cast<const char*>(data) + (begin - offset), offset + bytes - begin);
    }
    offset += bytes;
  });
  payload = std::move(rest);
  table.clear();
  blocks.clear();
  rest_owned = true;
  total = payload.size();
  sent = 0;
}

std::unique_ptr<OutFrame> BeginFrame(TransferId xfer, const TransferSecret& secret,
                                     int32_t n_layers, Deadline deadline) {
  auto f = std::make_unique<OutFrame>();
  f->header.type = FrameType::kBegin;
  f->header.xfer_id = xfer.value;
  f->header.arg0 = static_cast<uint32_t>(n_layers);
  f->header.payload_len = kAuthTagBytes;  // the tag, computed in Encode
  f->deadline = deadline;
  f->secret = secret;
  f->payload.assign(kAuthTagBytes, '\0');
  f->total = kFrameHeaderBytes + kAuthTagBytes;
  return f;
}

std::unique_ptr<OutFrame> LayerFrame(TransferId xfer, int32_t layer,
                                     absl::Span<const ConstBlockView> blocks) {
  auto f = std::make_unique<OutFrame>();
  f->header.type = FrameType::kLayer;
  f->header.xfer_id = xfer.value;
  f->header.arg0 = static_cast<uint32_t>(layer);
  f->header.arg1 = static_cast<uint32_t>(blocks.size());
  f->table.resize(blocks.size() * 8);
  for (size_t i = 0; i < blocks.size(); ++i) {
    PutU64Le(blocks[i].bytes, f->table.data() + 8 * i);
    f->data_bytes += static_cast<int64_t>(blocks[i].bytes);
  }
  f->blocks.assign(blocks.begin(), blocks.end());
  f->header.payload_len = f->table.size() + static_cast<uint64_t>(f->data_bytes);
  f->total = kFrameHeaderBytes + f->header.payload_len;
  return f;
}

std::unique_ptr<OutFrame> TrailerFrame(TransferId xfer, const TransferSecret& secret,
                                       std::string trailer) {
  auto f = std::make_unique<OutFrame>();
  f->header.type = FrameType::kTrailer;
  f->header.xfer_id = xfer.value;
  AuthTag tag = TrailerTag(secret, xfer, trailer);
  f->payload = std::move(trailer);
  f->payload.append(reinterpret_cast<const char*>(tag.data()), tag.size());
  f->header.payload_len = f->payload.size();
  f->total = kFrameHeaderBytes + f->payload.size();
  return f;
}

std::unique_ptr<OutFrame> AbortFrame(TransferId xfer, absl::StatusCode why) {
  auto f = std::make_unique<OutFrame>();
  f->header.type = FrameType::kAbort;
  f->header.xfer_id = xfer.value;
  f->header.arg0 = static_cast<uint32_t>(why);
  f->total = kFrameHeaderBytes;
  return f;
}

std::vector<OutFrame*> SendQueue::NextBatch(size_t max_frames, size_t max_iov) const {
  std::vector<OutFrame*> batch;
  size_t n_iov = 0;
  for (const auto& f : frames_) {
    size_t segments = f->max_segments();
    if (!batch.empty() && (n_iov + segments > max_iov || batch.size() >= max_frames)) break;
    batch.push_back(f.get());
    n_iov += segments;
  }
  return batch;
}

size_t SendQueue::Gather(absl::Span<OutFrame* const> batch, size_t max_iov,
                         std::vector<iovec>* iov) {
  size_t bytes = 0;
  for (OutFrame* f : batch) {
    size_t offset = 0;
    f->ForEachSegment([&](const void* data, size_t len) {
      size_t begin = std::max(offset, f->sent);
      // Once max_iov is reached nothing more is added: the iovecs stay a
      // prefix of the stream.
      if (begin < offset + len && iov->size() < max_iov) {
        iov->push_back({const_cast<char*>(static_cast<const char*>(data)) + (begin - offset),
                        offset + len - begin});
        bytes += offset + len - begin;
      }
      offset += len;
    });
  }
  return bytes;
}

int SendQueue::Drop(TransferId xfer, bool keep_begin) {
  int dropped = 0;
  for (auto it = frames_.begin(); it != frames_.end();) {
    OutFrame* f = it->get();
    if (f->xfer() != xfer) {
      ++it;
    } else if (it == frames_.begin() && f->sent > 0) {
      if (!f->rest_owned) f->MakeRestOwned();  // must finish, without the caller's views
      ++it;
    } else if (keep_begin && f->header.type == FrameType::kBegin) {
      ++it;
    } else {
      ++dropped;
      it = frames_.erase(it);
    }
  }
  return dropped;
}

}  // namespace pdserve::transport::internal
