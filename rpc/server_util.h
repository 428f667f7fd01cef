// Building blocks every pdserve gRPC server shares: health checking,
// reflection, listening on a host:port (port 0 = ephemeral).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace pdserve::rpc {

struct ServerHandle {
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the bound port
};

// Builds and starts a server on `address` ("host:port") with the services,
// grpc.health.v1 and server reflection enabled.
absl::StatusOr<ServerHandle> StartServer(const std::string& address,
                                         const std::vector<grpc::Service*>& services,
                                         int max_message_bytes = 64 << 20);

// Marks every service (and the overall server, "") SERVING or NOT_SERVING.
void SetServing(grpc::Server* server, bool serving);

// A channel with pdserve's defaults (keepalive, large messages).
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

}  // namespace pdserve::rpc
