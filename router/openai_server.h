// The router's OpenAI-compatible HTTP API: /v1/completions and
// /v1/chat/completions (streaming as SSE, or one JSON body), /v1/models, and
// /health and /ready. Each request becomes a GenerateCall whose events an
// OpenAiSink turns into OpenAI's objects; a client that leaves (or stops
// reading its stream) cancels the call, which aborts it on both nodes.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "http/http_server.h"
#include "router/openai_protocol.h"
#include "router/router_context.h"

namespace pdserve::router {

struct OpenAiOptions {
  // Names a request may use in "model"; the first is the one /v1/models lists.
  std::vector<std::string> model_names;
  int32_t chat_default_max_tokens = 512;
  // The caller's tenant from its credentials (request ids are scoped by it),
  // or an error (401). Unset: no authentication, tenant "anon".
  std::function<absl::StatusOr<std::string>(const http::HttpRequest&)> authenticate;
};

class OpenAiFrontend {
 public:
  // `ready` answers /ready: empty string when ready, else why not.
  OpenAiFrontend(RouterContext* ctx, OpenAiOptions options, std::function<std::string()> ready);

  // Adds the routes to `server` (before it starts). The frontend must
  // outlive the server.
  void Register(http::HttpServer* server);

 private:
  void HandleGenerate(openai::Endpoint endpoint, const http::HttpRequest& request,
                      std::shared_ptr<http::HttpResponder> responder);
  void HandleModels(const http::HttpRequest& request,
                    std::shared_ptr<http::HttpResponder> responder);
  absl::StatusOr<std::string> Authenticate(const http::HttpRequest& request) const;

  RouterContext* const ctx_;
  const OpenAiOptions options_;
  const std::function<std::string()> ready_;
  const int64_t created_;  // reported as the model's creation time
};

// The error envelope as an HTTP response (with Retry-After on 429).
http::HttpResponse ApiErrorResponse(const openai::ApiError& error);

}  // namespace pdserve::router
