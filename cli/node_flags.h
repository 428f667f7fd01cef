// Flag sets shared between subcommands that start routers and nodes.
#pragma once

#include "absl/status/statusor.h"
#include "cli/engine_flags.h"
#include "node/node_server.h"
#include "router/router_server.h"

namespace pdserve::cli {

void AddNodeFlags(po::options_description* desc);
absl::StatusOr<node::NodeOptions> ReadNodeFlags(const po::variables_map& vm, node::NodeRole role,
                                                EngineFlags* ef);
void AddRouterFlagsTo(po::options_description* desc);
// --tls-cert/--tls-key/--tls-ca/--tls-server-name, --api-key(-file) and
// --node-token-file: every process of a cluster takes the same set. The
// secrets may also come from the environment (PDSERVE_API_KEY,
// PDSERVE_NODE_TOKEN), never from a child's argv.
void AddSecurityFlags(po::options_description* desc);
rpc::SecurityFiles ReadSecurityFlags(const po::variables_map& vm);
absl::StatusOr<router::RouterOptions> ReadRouterFlags(const po::variables_map& vm);

}  // namespace pdserve::cli
