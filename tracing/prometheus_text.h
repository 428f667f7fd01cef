// Pieces of the Prometheus text exposition format 0.0.4.
#pragma once

#include <string>
#include <string_view>

namespace pdserve::tracing {

// Shortest text that parses back to `value`; "+Inf", "-Inf", "NaN".
std::string FormatPrometheusValue(double value);
// Label values escape backslash, double quote and newline.
std::string EscapeLabelValue(std::string_view value);
// HELP text escapes backslash and newline.
std::string EscapeHelp(std::string_view help);

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(std::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved).
bool IsValidLabelName(std::string_view name);

}  // namespace pdserve::tracing
