// Finished spans and their OTLP/JSON encoding (the OpenTelemetry protobuf
// JSON mapping: lowerCamelCase fields, hex ids, 64-bit integers as strings).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "tracing/stage_timeline.h"
#include "tracing/trace_context.h"

namespace pdserve::tracing {

// Values match opentelemetry.proto.trace.v1.Span.SpanKind.
enum class SpanKind : int { kInternal = 1, kServer = 2, kClient = 3, kProducer = 4, kConsumer = 5 };

using AttributeValue = std::variant<std::string, int64_t, double, bool>;
using Attributes = std::vector<std::pair<std::string, AttributeValue>>;

struct Span {
  TraceId trace_id;
  SpanId span_id;
  std::optional<SpanId> parent_span_id;
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  // Wall clock (Unix epoch) nanoseconds: each process derives them from its
  // own monotonic timings plus one wall-clock anchor it read itself.
  int64_t start_unix_ns = 0;
  int64_t end_unix_ns = 0;
  Attributes attributes;
  bool error = false;  // Status ERROR with `status_message`; else UNSET.
  std::string status_message;
};

// The process that emitted the spans.
struct OtlpResource {
  std::string service_name = "pdserve";
  Attributes attributes;  // service.name is added from service_name.
};

// Wall-clock nanoseconds now; use once per request as the anchor that
// places monotonic offsets on the wall clock.
int64_t WallNowUnixNs();

// One child span of `parent` per recorded stage ("prefill.compute", ...),
// placed at `origin_unix_ns` + the stage's offset.
std::vector<Span> StageSpans(const SpanContext& parent, const StageTimeline& timeline,
                             int64_t origin_unix_ns);

// {"resourceSpans":[{"resource":{...},"scopeSpans":[{"scope":{...},
// "spans":[...]}]}]} on one line: an OTLP ExportTraceServiceRequest.
std::string EncodeOtlpJson(const std::vector<Span>& spans, const OtlpResource& resource);

}  // namespace pdserve::tracing
