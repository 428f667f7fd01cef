#include "tracing/span.h"

#include <chrono>
#include <cmath>
#include <string_view>

#include <nlohmann/json.hpp>

namespace pdserve::tracing {
namespace {

constexpr char kScopeName[] = "pdserve";
constexpr char kScopeVersion[] = "0.1.0";
constexpr int kStatusCodeError = 2;  // opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

using Json = nlohmann::ordered_json;

// AnyValue: int64 is a decimal string in the JSON mapping.
Json EncodeValue(const AttributeValue& value) {
  return std::visit(
      [](const auto& v) -> Json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return {{"stringValue", v}};
        } else if constexpr (std::is_same_v<T, int64_t>) {
          return {{"intValue", std::to_string(v)}};
        } else if constexpr (std::is_same_v<T, double>) {
          // proto3 JSON spells non-finite doubles as strings.
          if (std::isnan(v)) return {{"doubleValue", "NaN"}};
          if (std::isinf(v)) return {{"doubleValue", v > 0 ? "Infinity" : "-Infinity"}};
          return {{"doubleValue", v}};
        } else {
          return {{"boolValue", v}};
        }
      },
      value);
}

Json EncodeAttributes(const Attributes& attributes) {
  Json out = Json::array();
  for (const auto& [key, value] : attributes) {
    out.push_back({{"key", key}, {"value", EncodeValue(value)}});
  }
  return out;
}

Json EncodeSpan(const Span& span) {
  Json out;
  out["traceId"] = span.trace_id.ToHex();
  out["spanId"] = span.span_id.ToHex();
  if (span.parent_span_id) out["parentSpanId"] = span.parent_span_id->ToHex();
  out["name"] = span.name;
  out["kind"] = static_cast<int>(span.kind);
  // fixed64 timestamps are strings in the JSON mapping.
  out["startTimeUnixNano"] = std::to_string(span.start_unix_ns);
  out["endTimeUnixNano"] = std::to_string(span.end_unix_ns);
  out["attributes"] = EncodeAttributes(span.attributes);
  if (span.error) {
    out["status"] = {{"code", kStatusCodeError}, {"message", span.status_message}};
  } else {
    out["status"] = Json::object();  // STATUS_CODE_UNSET.
  }
  return out;
}

}  // namespace

int64_t WallNowUnixNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<Span> StageSpans(const SpanContext& parent, const StageTimeline& timeline,
                             int64_t origin_unix_ns) {
  std::vector<Span> spans;
  for (const auto& [stage, interval] : timeline.Entries()) {
    Span span;
    span.trace_id = parent.trace_id;
    span.span_id = SpanId::Random();
    span.parent_span_id = parent.span_id;
    span.name = std::string(StageName(stage));
    span.kind = SpanKind::kInternal;
    span.start_unix_ns = origin_unix_ns + interval.start_offset_ns;
    span.end_unix_ns = span.start_unix_ns + interval.duration_ns;
    span.attributes.emplace_back("pdserve.stage", std::string(StageName(stage)));
    spans.push_back(std::move(span));
  }
  return spans;
}

std::string EncodeOtlpJson(const std::vector<Span>& spans, const OtlpResource& resource) {
  Attributes resource_attributes = {{"service.name", resource.service_name}};
  for (const auto& attribute : resource.attributes) {
    if (attribute.first != "service.name") resource_attributes.push_back(attribute);
  }
  Json encoded_spans = Json::array();
  for (const Span& span : spans) encoded_spans.push_back(EncodeSpan(span));
  Json scope_spans = {{"scope", {{"name", kScopeName}, {"version", kScopeVersion}}},
                      {"spans", std::move(encoded_spans)}};
  Json resource_spans = {{"resource", {{"attributes", EncodeAttributes(resource_attributes)}}},
                         {"scopeSpans", Json::array({std::move(scope_spans)})}};
  Json request = {{"resourceSpans", Json::array({std::move(resource_spans)})}};
  // Span names and attributes may carry client text: never throw on bad UTF-8.
  return request.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace pdserve::tracing
