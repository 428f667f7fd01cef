// Bearer-token checks for HTTP routes (the API key of --api-key).
#pragma once

#include <string_view>

#include "http/http_types.h"

namespace pdserve::http {

// True when `api_key` is empty or the request carries
// `Authorization: Bearer <api_key>`. Compares in constant time.
bool HasBearerToken(const HttpRequest& request, std::string_view api_key);

}  // namespace pdserve::http
