// Internal to http/: maps method + exact path to a handler.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "http/http_stream.h"
#include "http/http_types.h"

namespace pdserve::http::internal {

// Filled before the server starts, read-only afterwards (no lock needed).
class RouteTable {
 public:
  RouteTable();

  // A later route for the same method and path replaces the earlier one.
  void Add(std::string method, std::string path, HttpAsyncHandler handler);
  void SetFallback(HttpAsyncHandler handler);

  // Runs the matching handler; 405 (with Allow) when only the method differs;
  // the fallback otherwise. A handler that throws gets 500.
  void Dispatch(const HttpRequest& request, std::shared_ptr<HttpResponder> responder) const;

 private:
  // path -> (method, handler) in registration order.
  absl::flat_hash_map<std::string, std::vector<std::pair<std::string, HttpAsyncHandler>>> routes_;
  HttpAsyncHandler fallback_;
};

}  // namespace pdserve::http::internal
