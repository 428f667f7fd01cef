// libFuzzer target for the HTTP request parser (http/request_parser.h, the
// same parser settings and conversion the server's connections use): any
// bytes must parse, ask for more, or be refused with a 4xx; never crash,
// leak, or hand out a request past the limits. Pipelined requests are parsed
// one after another, as a connection would.
//   build-san/bin/http_request_fuzz -max_total_time=600 tests/fuzz/corpus/http_request
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/check.h"
#include "http/http_types.h"
#include "http/request_parser.h"

namespace {

using pdserve::http::ParseRequestBytes;
using pdserve::http::ParseResult;
using pdserve::http::RequestLimits;

volatile size_t g_sink;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  RequestLimits limits;
  limits.max_body_bytes = 1 << 16;
  limits.max_header_bytes = 4 << 10;
  limits.max_header_fields = 32;
  for (int n_requests = 0; n_requests < 8 && !bytes.empty(); ++n_requests) {
    const ParseResult r = ParseRequestBytes(bytes, limits);
    if (r.state == ParseResult::State::kRejected) {
      PDS_CHECK(r.error.status == 400 || r.error.status == 413 || r.error.status == 431)
          << r.error.status;
      PDS_CHECK(!r.error.message.empty());
      break;
    }
    if (r.state == ParseResult::State::kIncomplete) break;
    const pdserve::http::HttpRequest& req = r.request;
    PDS_CHECK(r.consumed_bytes > 0 && r.consumed_bytes <= bytes.size()) << r.consumed_bytes;
    PDS_CHECK(req.body.size() <= limits.max_body_bytes) << req.body.size();
    PDS_CHECK(req.headers.size() <= limits.max_header_fields) << req.headers.size();
    PDS_CHECK(req.target.compare(0, req.path.size(), req.path) == 0);
    PDS_CHECK(req.version == 10 || req.version == 11) << req.version;
    // What handlers do with a request.
    size_t h = req.Header("content-type").value_or("").size() +
               req.Header("authorization").value_or("").size() +
               req.QueryParam("a").value_or("").size();
    for (const auto& [name, value] : req.headers) h += name.size() + value.size();
    for (const auto& [key, value] : req.query) h += key.size() + value.size();
    h += pdserve::http::PercentDecode(req.path, false).size();
    h += pdserve::http::FormatSseEvent(req.body).size();
    g_sink = h;
    bytes.remove_prefix(r.consumed_bytes);
  }
  return 0;
}
