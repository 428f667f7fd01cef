#include "tracing/trace_context.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"

namespace pdserve::tracing {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";
constexpr size_t kVersion00Length = 55;  // 2 + 1 + 32 + 1 + 16 + 1 + 2.

// Lowercase only: the spec's HEXDIGLC.
int LowerHexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

template <size_t N>
bool DecodeHex(std::string_view hex, std::array<uint8_t, N>* bytes) {
  if (hex.size() != 2 * N) return false;
  for (size_t i = 0; i < N; ++i) {
    const int hi = LowerHexValue(hex[2 * i]);
    const int lo = LowerHexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*bytes)[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

template <size_t N>
std::string EncodeHex(const std::array<uint8_t, N>& bytes) {
  std::string hex(2 * N, '0');
  for (size_t i = 0; i < N; ++i) {
    hex[2 * i] = kHexDigits[bytes[i] >> 4];
    hex[2 * i + 1] = kHexDigits[bytes[i] & 0xf];
  }
  return hex;
}

template <size_t N>
bool AllZero(const std::array<uint8_t, N>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

// Ids must be unique, not secret: a per-thread 64-bit generator seeded from
// the OS is enough and keeps id creation lock-free.
template <size_t N>
std::array<uint8_t, N> RandomNonZeroBytes() {
  thread_local std::mt19937_64 rng([] {
    std::random_device device;
    std::seed_seq seed{
        device(),
        device(),
        device(),
        device(),
        static_cast<unsigned>(std::hash<std::thread::id>()(std::this_thread::get_id())),
        static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count())};
    return std::mt19937_64(seed);
  }());
  std::array<uint8_t, N> bytes;
  do {
    for (size_t i = 0; i < N; i += 8) {
      uint64_t word = rng();
      for (size_t j = i; j < std::min(N, i + 8); ++j, word >>= 8) bytes[j] = word & 0xff;
    }
  } while (AllZero(bytes));
  return bytes;
}

absl::Status Invalid(std::string_view header, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(
      "invalid traceparent '", std::string(header.substr(0, 80)), "': ", std::string(why)));
}

}  // namespace

bool TraceId::valid() const { return !AllZero(bytes); }
std::string TraceId::ToHex() const { return EncodeHex(bytes); }
std::optional<TraceId> TraceId::FromHex(std::string_view hex) {
  TraceId id;
  if (!DecodeHex(hex, &id.bytes) || !id.valid()) return std::nullopt;
  return id;
}
TraceId TraceId::Random() { return TraceId{RandomNonZeroBytes<16>()}; }

bool SpanId::valid() const { return !AllZero(bytes); }
std::string SpanId::ToHex() const { return EncodeHex(bytes); }
std::optional<SpanId> SpanId::FromHex(std::string_view hex) {
  SpanId id;
  if (!DecodeHex(hex, &id.bytes) || !id.valid()) return std::nullopt;
  return id;
}
SpanId SpanId::Random() { return SpanId{RandomNonZeroBytes<8>()}; }

absl::StatusOr<TraceParent> ParseTraceparent(std::string_view header) {
  const size_t first = header.find_first_not_of(" \t");
  if (first == std::string_view::npos) return Invalid(header, "empty");
  header = header.substr(first, header.find_last_not_of(" \t") - first + 1);

  if (header.size() < kVersion00Length) return Invalid(header, "too short");
  std::array<uint8_t, 1> version;
  if (!DecodeHex(header.substr(0, 2), &version)) return Invalid(header, "bad version");
  if (version[0] == 0xff) return Invalid(header, "version ff is forbidden");
  if (version[0] == 0x00 && header.size() != kVersion00Length) {
    return Invalid(header, "version 00 must be 55 characters");
  }
  // Later versions may append fields, each after a '-'.
  if (header.size() > kVersion00Length && header[kVersion00Length] != '-') {
    return Invalid(header, "unexpected data after trace-flags");
  }
  if (header[2] != '-' || header[35] != '-' || header[52] != '-') {
    return Invalid(header, "fields must be separated by '-'");
  }
  TraceParent parent;
  if (!DecodeHex(header.substr(3, 32), &parent.trace_id.bytes)) {
    return Invalid(header, "trace-id must be 32 lowercase hex digits");
  }
  if (!parent.trace_id.valid()) return Invalid(header, "trace-id is all zeros");
  if (!DecodeHex(header.substr(36, 16), &parent.parent_id.bytes)) {
    return Invalid(header, "parent-id must be 16 lowercase hex digits");
  }
  if (!parent.parent_id.valid()) return Invalid(header, "parent-id is all zeros");
  std::array<uint8_t, 1> flags;
  if (!DecodeHex(header.substr(53, 2), &flags)) {
    return Invalid(header, "trace-flags must be 2 lowercase hex digits");
  }
  parent.flags = flags[0];
  return parent;
}

std::string FormatTraceparent(const TraceParent& parent) {
  return absl::StrCat("00-", parent.trace_id.ToHex(), "-", parent.parent_id.ToHex(), "-",
                      EncodeHex(std::array<uint8_t, 1>{parent.flags}));
}

std::string SpanContext::ToTraceparent() const {
  return FormatTraceparent(TraceParent{trace_id, span_id, flags});
}

SpanContext StartServerSpan(std::optional<std::string_view> traceparent) {
  SpanContext span;
  span.span_id = SpanId::Random();
  if (traceparent) {
    if (absl::StatusOr<TraceParent> parent = ParseTraceparent(*traceparent); parent.ok()) {
      span.trace_id = parent->trace_id;
      span.parent_span_id = parent->parent_id;
      span.flags = parent->flags;
      return span;
    }
  }
  span.trace_id = TraceId::Random();
  span.flags = kTraceFlagSampled;
  return span;
}

SpanContext StartChildSpan(const SpanContext& parent) {
  SpanContext child;
  child.trace_id = parent.trace_id;
  child.span_id = SpanId::Random();
  child.parent_span_id = parent.span_id;
  child.flags = parent.flags;
  return child;
}

}  // namespace pdserve::tracing
