// W3C Trace Context: the `traceparent` header (version 00) and the ids it
// carries. https://www.w3.org/TR/trace-context/
//
//   traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
//                ver trace-id (16 bytes)              parent-id (8)    flags
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace pdserve::tracing {

struct TraceId {
  std::array<uint8_t, 16> bytes{};

  bool valid() const;         // Not all zeros.
  std::string ToHex() const;  // 32 lowercase hex digits.
  // Exactly 32 lowercase hex digits, not all zero.
  static std::optional<TraceId> FromHex(std::string_view hex);
  static TraceId Random();  // Never all zeros.
  bool operator==(const TraceId&) const = default;
};

struct SpanId {
  std::array<uint8_t, 8> bytes{};

  bool valid() const;
  std::string ToHex() const;  // 16 lowercase hex digits.
  static std::optional<SpanId> FromHex(std::string_view hex);
  static SpanId Random();
  bool operator==(const SpanId&) const = default;
};

inline constexpr uint8_t kTraceFlagSampled = 0x01;

// What a `traceparent` header carries: the caller's trace and span.
struct TraceParent {
  TraceId trace_id;
  SpanId parent_id;
  uint8_t flags = 0;

  bool sampled() const { return (flags & kTraceFlagSampled) != 0; }
  bool operator==(const TraceParent&) const = default;
};

// Parses per the spec: lowercase hex only, all-zero ids rejected, version ff
// rejected, version 00 exactly 55 characters. A higher version is read as 00
// and may carry more fields after a '-'. Surrounding spaces and tabs are
// ignored. INVALID_ARGUMENT otherwise: the caller then starts a new trace.
absl::StatusOr<TraceParent> ParseTraceparent(std::string_view header);
// Version 00.
std::string FormatTraceparent(const TraceParent& parent);

// The span a process opens for one piece of work.
struct SpanContext {
  TraceId trace_id;
  SpanId span_id;
  std::optional<SpanId> parent_span_id;  // None for a trace's root span.
  uint8_t flags = kTraceFlagSampled;

  bool sampled() const { return (flags & kTraceFlagSampled) != 0; }
  // The header to send downstream: this span becomes the callee's parent.
  std::string ToTraceparent() const;
};

// The server span for an incoming request: continues the caller's trace
// (keeping its trace id and flags, with the caller's span as parent) when
// `traceparent` is present and valid, else starts a new sampled trace.
SpanContext StartServerSpan(std::optional<std::string_view> traceparent);
// A new span under `parent` in the same trace.
SpanContext StartChildSpan(const SpanContext& parent);

}  // namespace pdserve::tracing
