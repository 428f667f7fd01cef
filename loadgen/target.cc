#include "loadgen/target.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "loadgen/grpc_client.h"
#include "loadgen/http_client.h"

namespace pdserve::loadgen {

absl::StatusOr<Target> ParseTarget(const std::string& url) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target '", url, "': ", why, " (expected grpc://HOST:PORT or http://HOST:PORT)"));
  };
  Target t;
  t.url = url;
  std::string rest;
  if (absl::StartsWith(url, "grpc://")) {
    t.kind = Target::Kind::kGrpc;
    rest = url.substr(7);
  } else if (absl::StartsWith(url, "http://")) {
    t.kind = Target::Kind::kHttp;
    rest = url.substr(7);
  } else if (absl::StartsWith(url, "https://")) {
    return bad("https is not supported");
  } else {
    return bad("unknown scheme");
  }
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  if (slash != std::string::npos) {
    if (t.kind == Target::Kind::kGrpc && rest.size() > slash + 1) return bad("grpc takes no path");
    t.base_path = rest.substr(slash);
    while (!t.base_path.empty() && t.base_path.back() == '/') t.base_path.pop_back();
  }
  // [v6addr]:port or host:port.
  size_t colon;
  if (!authority.empty() && authority[0] == '[') {
    const size_t close = authority.find(']');
    if (close == std::string::npos) return bad("unterminated '['");
    t.host = authority.substr(1, close - 1);
    colon = authority.find(':', close);
  } else {
    colon = authority.rfind(':');
    t.host = authority.substr(0, colon);
  }
  if (t.host.empty()) return bad("no host");
  if (colon == std::string::npos) return bad("no port");
  if (!absl::SimpleAtoi(authority.substr(colon + 1), &t.port) || t.port <= 0 || t.port > 65535) {
    return bad("bad port");
  }
  return t;
}

absl::StatusOr<std::unique_ptr<LoadClient>> MakeClient(const Target& target,
                                                       const ClientOptions& options) {
  if (target.kind == Target::Kind::kGrpc) {
    const bool v6 = target.host.find(':') != std::string::npos;
    return std::unique_ptr<LoadClient>(
        new GrpcClient(v6 ? absl::StrCat("[", target.host, "]:", target.port)
                          : absl::StrCat(target.host, ":", target.port)));
  }
  HttpClientOptions http;
  http.host = target.host;
  http.port = target.port;
  http.completions_path = target.base_path + options.endpoint;
  http.models_path = target.base_path + "/v1/models";
  http.model = options.model;
  return HttpClient::Create(http);
}

}  // namespace pdserve::loadgen
