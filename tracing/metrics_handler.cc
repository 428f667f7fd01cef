#include "tracing/metrics_handler.h"

#include <utility>

namespace pdserve::tracing {

http::HttpResponse MetricsResponse(const MetricsRegistry& registry) {
  http::HttpResponse response;
  response.status = 200;
  response.content_type = kPrometheusTextContentType;
  response.body = registry.RenderText();
  return response;
}

void AddMetricsRoute(http::HttpServer& server, const MetricsRegistry& registry, std::string path) {
  server.Handle("GET", std::move(path),
                [&registry](const http::HttpRequest&) { return MetricsResponse(registry); });
}

}  // namespace pdserve::tracing
