#include "http/route_table.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/log_escape.h"

namespace pdserve::http::internal {

RouteTable::RouteTable()
    : fallback_([](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
        responder->Respond(
            HttpResponse::Text(404, absl::StrCat("no route for ", request.path, "\n")));
      }) {}

void RouteTable::Add(std::string method, std::string path, HttpAsyncHandler handler) {
  auto& methods = routes_[std::move(path)];
  for (auto& [existing, existing_handler] : methods) {
    if (existing == method) {
      existing_handler = std::move(handler);
      return;
    }
  }
  methods.emplace_back(std::move(method), std::move(handler));
}

void RouteTable::SetFallback(HttpAsyncHandler handler) { fallback_ = std::move(handler); }

void RouteTable::Dispatch(const HttpRequest& request,
                          std::shared_ptr<HttpResponder> responder) const {
  const HttpAsyncHandler* handler = &fallback_;
  std::vector<std::string> allowed;
  if (auto it = routes_.find(request.path); it != routes_.end()) {
    handler = nullptr;
    for (const auto& [method, method_handler] : it->second) {
      if (method == request.method) {
        handler = &method_handler;
        break;
      }
      allowed.push_back(method);
    }
  }
  if (handler == nullptr) {
    HttpResponse response = HttpResponse::Text(
        405, absl::StrCat("method ", request.method, " not allowed for ", request.path, "\n"));
    response.headers.emplace_back("Allow", absl::StrJoin(allowed, ", "));
    responder->Respond(std::move(response));
    return;
  }
  // Handlers are our code, but some libraries they call (nlohmann-json)
  // throw: a request must never take the process down.
  try {
    (*handler)(request, responder);
  } catch (const std::exception& e) {
    PDS_LOG(ERROR) << "http: handler for " << LogQuote(request.method) << " "
                   << LogQuote(request.path) << " threw: " << LogQuote(e.what());
    responder->Respond(HttpResponse::Text(500, "internal error\n"));
  }
}

}  // namespace pdserve::http::internal
