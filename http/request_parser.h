// Turning bytes into an HttpRequest, shared by the server's connections and
// usable on a plain buffer (the fuzzer, tests): the same Beast parser
// settings, the same limits, the same conversion. Beast-free header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "http/http_types.h"

namespace pdserve::http {

struct RequestLimits {
  uint64_t max_body_bytes = 8 << 20;     // larger bodies: 413
  uint32_t max_header_bytes = 16 << 10;  // request line + headers; larger: 431
  uint32_t max_header_fields = 100;      // more header fields: 431
};

// Why a request is refused before any handler sees it.
struct RequestError {
  int status = 400;  // 400 malformed, 413 body too large, 431 header too large
  std::string message;
};

// The header-field count check (Beast bounds header bytes, not fields).
std::optional<RequestError> CheckHeaderFields(size_t n_fields, const RequestLimits& limits);

// Builds the request handlers see from what the parser read: splits the
// target into path and query.
HttpRequest MakeHttpRequest(std::string method, std::string target, HeaderList headers,
                            std::string body, int version, std::string remote_address);

// Parses one request from the start of `bytes`.
struct ParseResult {
  enum class State { kComplete, kIncomplete, kRejected };
  State state = State::kIncomplete;
  HttpRequest request;        // kComplete
  RequestError error;         // kRejected
  size_t consumed_bytes = 0;  // kComplete: where a pipelined next request starts
};
ParseResult ParseRequestBytes(std::string_view bytes, const RequestLimits& limits);

}  // namespace pdserve::http
