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

void AddMetricsRoute(http::HttpServer& server, const MetricsRegistry& registry,
                     MetricsAuthorizer authorize, std::string denied_message, std::string path) {
  server.Handle("GET", std::move(path),
                [&registry, authorize = std::move(authorize),
                 denied_message = std::move(denied_message)](const http::HttpRequest& request) {
                  if (authorize && !authorize(request)) {
                    return http::HttpResponse::Text(401, denied_message);
                  }
                  return MetricsResponse(registry);
                });
}

}  // namespace pdserve::tracing
