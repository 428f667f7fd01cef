// Serves a MetricsRegistry over HTTP. The only HTTP-aware file in tracing/.
#pragma once

#include <functional>
#include <string>

#include "http/http_server.h"
#include "http/http_types.h"
#include "tracing/metrics.h"

namespace pdserve::tracing {

// The Prometheus text exposition of `registry`, ready to send.
http::HttpResponse MetricsResponse(const MetricsRegistry& registry);

// Whether a request may read the metrics (the servers check its API key).
using MetricsAuthorizer = std::function<bool(const http::HttpRequest&)>;

// Adds GET `path` answering MetricsResponse(registry), or 401 with
// `denied_message` to a request `authorize` refuses (null: anyone may read).
// `registry` and what `authorize` uses must outlive the server. Call before
// server.Start().
void AddMetricsRoute(http::HttpServer& server, const MetricsRegistry& registry,
                     MetricsAuthorizer authorize = nullptr,
                     std::string denied_message = "unauthorized\n", std::string path = "/metrics");

}  // namespace pdserve::tracing
