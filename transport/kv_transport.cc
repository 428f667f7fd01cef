#include "transport/kv_transport.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "transport/tcp_socket.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport {

absl::StatusOr<std::chrono::milliseconds> KvBudgetFromRequest(int64_t kv_deadline_ms) {
  if (kv_deadline_ms == 0) return kDefaultKvBudget;
  if (kv_deadline_ms < 1 || kv_deadline_ms > kMaxKvBudget.count()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_deadline_ms ", kv_deadline_ms, " is out of range [1, ", kMaxKvBudget.count(), "]"));
  }
  return std::chrono::milliseconds(kv_deadline_ms);
}

absl::Status ValidateKvEndpoint(std::string_view endpoint) {
  constexpr size_t kMaxEndpoint = 256;
  auto bad = [&](std::string_view why) {
    // The endpoint came from a peer: quote a bounded, escaped prefix only.
    const std::string shown(endpoint.substr(0, 64));
    return absl::InvalidArgumentError(absl::StrCat("bad KV endpoint '", absl::CHexEscape(shown),
                                                   endpoint.size() > 64 ? "...'" : "'", ": ",
                                                   std::string(why)));
  };
  if (endpoint.empty()) return bad("empty");
  if (endpoint.size() > kMaxEndpoint) return bad(absl::StrCat("longer than ", kMaxEndpoint));
  for (char c : endpoint) {
    if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) return bad("unprintable character");
  }
  std::string_view rest = endpoint;
  auto consume = [&rest](std::string_view prefix) {
    if (rest.substr(0, prefix.size()) != prefix) return false;
    rest.remove_prefix(prefix.size());
    return true;
  };
  if (consume("loopback:")) {
    if (rest.empty()) return bad("no loopback name");
    return absl::OkStatus();
  }
  if (!consume("nccl:")) consume("ipc:");
  absl::StatusOr<internal::HostPort> hp = internal::ParseHostPort(std::string(rest));
  if (!hp.ok()) return bad("want host:port");
  if (hp->host.empty()) return bad("no host");
  const bool v6 = !rest.empty() && rest[0] == '[';
  for (char c : hp->host) {
    const bool ok = absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
                    c == '_' || (v6 && (c == ':' || c == '%'));
    if (!ok) return bad("bad character in host");
  }
  return absl::OkStatus();
}

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
  s.begins_refused = begins_refused_.load(std::memory_order_relaxed);
  s.connections_refused = connections_refused_.load(std::memory_order_relaxed);
  s.connections_timed_out = connections_timed_out_.load(std::memory_order_relaxed);
  s.protocol_errors = protocol_errors_.load(std::memory_order_relaxed);
  for (int i = 0; i < KvTransportStats::kNumCodes; ++i) {
    s.failures_by_code[i] = failures_[i].load(std::memory_order_relaxed);
  }
  return s;
}

}  // namespace internal
}  // namespace pdserve::transport
