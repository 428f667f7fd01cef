#include "http/request_parser.h"

#include <utility>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "absl/strings/str_cat.h"

namespace pdserve::http {
namespace {
namespace bhttp = boost::beast::http;
std::string ToString(boost::beast::string_view s) { return std::string(s.data(), s.size()); }
}  // namespace

std::optional<RequestError> CheckHeaderFields(size_t n_fields, const RequestLimits& limits) {
  if (n_fields <= limits.max_header_fields) return std::nullopt;
  return RequestError{431, absl::StrCat("request has ", n_fields, " header fields; the limit is ",
                                        limits.max_header_fields, "\n")};
}

HttpRequest MakeHttpRequest(std::string method, std::string target, HeaderList headers,
                            std::string body, int version, std::string remote_address) {
  HttpRequest request;
  request.method = std::move(method);
  request.target = std::move(target);
  const size_t question = request.target.find('?');
  request.path = request.target.substr(0, question);
  if (question != std::string::npos) {
    request.query = ParseQueryString(std::string_view(request.target).substr(question + 1));
  }
  request.headers = std::move(headers);
  request.body = std::move(body);
  request.version = version;
  request.remote_address = std::move(remote_address);
  return request;
}

ParseResult ParseRequestBytes(std::string_view bytes, const RequestLimits& limits) {
  ParseResult result;
  bhttp::request_parser<bhttp::string_body> parser;
  parser.header_limit(limits.max_header_bytes);
  parser.body_limit(limits.max_body_bytes);
  parser.eager(true);
  size_t used = 0;
  auto reject = [&result](int status, std::string message) {
    result.state = ParseResult::State::kRejected;
    result.error = {status, std::move(message)};
    return std::move(result);
  };
  while (!parser.is_done()) {
    boost::system::error_code ec;
    const size_t n = parser.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), ec);
    used += n;
    if (ec == bhttp::error::need_more) {
      if (used == bytes.size() || n == 0) return result;  // kIncomplete
      continue;
    }
    if (ec == bhttp::error::body_limit) {
      return reject(413, absl::StrCat("request body exceeds ", limits.max_body_bytes, " bytes\n"));
    }
    if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
      return reject(431,
                    absl::StrCat("request header exceeds ", limits.max_header_bytes, " bytes\n"));
    }
    if (ec) return reject(400, absl::StrCat("malformed request: ", ec.message(), "\n"));
    if (n == 0 && !parser.is_done()) return result;  // no progress: needs more
    if (parser.is_header_done()) {
      const auto& header = parser.get();
      if (std::optional<RequestError> e = CheckHeaderFields(
              static_cast<size_t>(std::distance(header.begin(), header.end())), limits)) {
        return reject(e->status, std::move(e->message));
      }
    }
  }
  bhttp::request<bhttp::string_body> message = parser.release();
  HeaderList headers;
  for (const auto& field : message) {
    headers.emplace_back(ToString(field.name_string()), ToString(field.value()));
  }
  result.request = MakeHttpRequest(ToString(message.method_string()), ToString(message.target()),
                                   std::move(headers), std::move(message.body()),
                                   static_cast<int>(message.version()), "");
  result.state = ParseResult::State::kComplete;
  result.consumed_bytes = used;
  return result;
}

}  // namespace pdserve::http
