#include "transport/kv_transport.h"

#include "transport/transfer_counters.h"

namespace pdserve::transport {

size_t TotalBytes(absl::Span<const BlockView> views) {
  size_t total = 0;
  for (const BlockView& v : views) total += v.bytes;
  return total;
}

size_t TotalBytes(absl::Span<const ConstBlockView> views) {
  size_t total = 0;
  for (const ConstBlockView& v : views) total += v.bytes;
  return total;
}

namespace internal {

void TransferCounters::Finished(const absl::Status& status, int64_t elapsed_ns) {
  busy_ns_.fetch_add(elapsed_ns, std::memory_order_relaxed);
  if (status.ok()) {
    ok_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  failed_.fetch_add(1, std::memory_order_relaxed);
  int code = static_cast<int>(status.code());
  if (code < 0 || code >= KvTransportStats::kNumCodes)
    code = static_cast<int>(absl::StatusCode::kUnknown);
  failures_[code].fetch_add(1, std::memory_order_relaxed);
}

KvTransportStats TransferCounters::Snapshot() const {
  KvTransportStats s;
  s.transfers_started = started_.load(std::memory_order_relaxed);
  s.transfers_ok = ok_.load(std::memory_order_relaxed);
  s.transfers_failed = failed_.load(std::memory_order_relaxed);
  s.bytes = bytes_.load(std::memory_order_relaxed);
  s.busy_ns = busy_ns_.load(std::memory_order_relaxed);
  for (int i = 0; i < KvTransportStats::kNumCodes; ++i) {
    s.failures_by_code[i] = failures_[i].load(std::memory_order_relaxed);
  }
  return s;
}

}  // namespace internal
}  // namespace pdserve::transport
