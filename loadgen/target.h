// Where the load goes: grpc://HOST:PORT (a pdserve router or `serve` node)
// or http://HOST:PORT[/PREFIX] (an OpenAI-compatible server).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "loadgen/client.h"

namespace pdserve::loadgen {

struct Target {
  enum class Kind { kGrpc, kHttp };
  Kind kind = Kind::kGrpc;
  std::string host;
  int port = 0;
  std::string base_path;  // HTTP only: "" or "/prefix" (no trailing '/')
  std::string url;        // as given
};

// InvalidArgument with a message naming the accepted forms.
absl::StatusOr<Target> ParseTarget(const std::string& url);

struct ClientOptions {
  std::string endpoint = "/v1/completions";  // HTTP: appended to base_path
  std::string model;                         // HTTP: the "model" field
};

absl::StatusOr<std::unique_ptr<LoadClient>> MakeClient(const Target& target,
                                                       const ClientOptions& options);

}  // namespace pdserve::loadgen
