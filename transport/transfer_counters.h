// Lock-free counters behind KvTransportStats, shared by every backend.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "transport/kv_transport.h"

namespace pdserve::transport::internal {

class TransferCounters {
 public:
  void Started() { started_.fetch_add(1, std::memory_order_relaxed); }
  void AddBytes(int64_t bytes) { bytes_.fetch_add(bytes, std::memory_order_relaxed); }
  void BeginRefused() { begins_refused_.fetch_add(1, std::memory_order_relaxed); }
  void ConnectionRefused() { connections_refused_.fetch_add(1, std::memory_order_relaxed); }
  void ConnectionTimedOut() { connections_timed_out_.fetch_add(1, std::memory_order_relaxed); }
  void ProtocolError() { protocol_errors_.fetch_add(1, std::memory_order_relaxed); }
  // Records a finished transfer: status OK or the failure's code.
  void Finished(const absl::Status& status, int64_t elapsed_ns);

  KvTransportStats Snapshot() const;

 private:
  std::atomic<int64_t> started_{0};
  std::atomic<int64_t> ok_{0};
  std::atomic<int64_t> failed_{0};
  std::atomic<int64_t> bytes_{0};
  std::atomic<int64_t> busy_ns_{0};
  std::atomic<int64_t> begins_refused_{0};
  std::atomic<int64_t> connections_refused_{0};
  std::atomic<int64_t> connections_timed_out_{0};
  std::atomic<int64_t> protocol_errors_{0};
  std::array<std::atomic<int64_t>, KvTransportStats::kNumCodes> failures_{};
};

}  // namespace pdserve::transport::internal
