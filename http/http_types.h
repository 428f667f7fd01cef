// Plain request/response values exchanged between the HTTP server and its
// handlers. No Beast here: every target that handles HTTP includes this.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pdserve::http {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;  // "GET", "POST", ... as sent.
  std::string target;  // Raw request target: "/v1/completions?x=1".
  std::string path;    // Target up to '?', not percent-decoded.
  // Query parameters in order, percent-decoded ('+' is a space).
  std::vector<std::pair<std::string, std::string>> query;
  HeaderList headers;  // In arrival order; names as sent.
  std::string body;
  int version = 11;            // 10 for HTTP/1.0, 11 for HTTP/1.1.
  std::string remote_address;  // "127.0.0.1:53422".

  // First header named `name`, compared case-insensitively.
  std::optional<std::string_view> Header(std::string_view name) const;
  // First query parameter named `name` (exact match).
  std::optional<std::string_view> QueryParam(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  HeaderList headers;  // Extra headers; Content-Length and Connection are set by the server.
  std::string body;

  static HttpResponse Text(int status, std::string body);
  static HttpResponse Json(int status, std::string body);
};

// Status line and headers of a streamed (chunked) response.
struct HttpStreamHead {
  int status = 200;
  std::string content_type = "text/event-stream";
  HeaderList headers;  // Transfer-Encoding and Connection are set by the server.
};

// Splits "a=1&b=x%20y" into decoded pairs. Malformed escapes are kept verbatim.
std::vector<std::pair<std::string, std::string>> ParseQueryString(std::string_view query);
// Decodes %XX escapes, and '+' as space when `plus_is_space`.
std::string PercentDecode(std::string_view text, bool plus_is_space);

// Formats one Server-Sent Event: optional "event:" line, one "data:" line per
// line of `data`, then a blank line.
std::string FormatSseEvent(std::string_view data, std::string_view event = {});

}  // namespace pdserve::http
