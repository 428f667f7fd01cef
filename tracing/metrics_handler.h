// Serves a MetricsRegistry over HTTP. The only HTTP-aware file in tracing/.
#pragma once

#include <string>

#include "http/http_server.h"
#include "http/http_types.h"
#include "tracing/metrics.h"

namespace pdserve::tracing {

// The Prometheus text exposition of `registry`, ready to send.
http::HttpResponse MetricsResponse(const MetricsRegistry& registry);

// Adds GET `path` answering MetricsResponse(registry). `registry` must outlive
// the server. Call before server.Start().
void AddMetricsRoute(http::HttpServer& server, const MetricsRegistry& registry,
                     std::string path = "/metrics");

}  // namespace pdserve::tracing
