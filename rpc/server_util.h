// Building blocks every pdserve gRPC server and client shares: health
// checking, reflection, listening on a host:port (port 0 = ephemeral), and
// the security of both ends: TLS (mutual between router and nodes) and the
// two kinds of bearer credential in `authorization: Bearer <token>`
// metadata: client API keys (one tenant each) on the client API, the node
// token on the Registry and Node services.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pdserve::rpc {

// Where a process's TLS material and credentials come from (flags, files,
// environment: see cli/cmd_router.cc). Secret values are never argv flags of
// a child process: `pdserve cluster` hands them over by file.
struct SecurityFiles {
  std::string cert_file;    // PEM certificate chain: served, and shown to peers (mTLS)
  std::string key_file;     // PEM private key of cert_file
  std::string ca_file;      // PEM CA bundle that peers' certificates must chain to
  std::string server_name;  // name peers' certificates must carry (default: the host dialled)
  // Client API keys (clients present one as `authorization: Bearer <key>`);
  // each key is its own tenant. `api_key`: one key's value; `api_key_file`:
  // one key per line (blank lines and lines starting with '#' skipped).
  std::string api_key;
  std::string api_key_file;
  // The node credential: what the router and the nodes present to each
  // other's Registry and Node services. `node_token`: the value (from
  // PDSERVE_NODE_TOKEN or set in-process); `node_token_file`: read from a file.
  std::string node_token;
  std::string node_token_file;
};

// Loaded security settings. Default-constructed: plaintext, no credentials.
struct Security {
  std::string cert_pem, key_pem, ca_pem;
  std::string server_name;
  // Client API keys and their tenants (same order); empty: clients need no
  // key and all share one anonymous tenant.
  std::vector<std::string> api_keys;
  std::vector<std::string> tenants;
  std::string node_token;  // empty: no node token
  // Sent as `authorization: Bearer <call_token>` on every call of a channel
  // MakeChannel builds; empty: none. ForPeers() sets it.
  std::string call_token;

  // Reads the files; InvalidArgument names the file or flag that is bad.
  static absl::StatusOr<Security> Load(const SecurityFiles& files);
  bool tls() const { return !cert_pem.empty(); }
  bool mutual() const { return tls() && !ca_pem.empty(); }
  // Whether the Registry and Node services authenticate nodes by a node
  // credential (a node token or an mTLS certificate) rather than not at all
  // or by the client API key (the legacy shared-key mode).
  bool has_node_credential() const { return !node_token.empty() || mutual(); }
  // Non-empty: a warning for the startup log that node services accept
  // callers without a node credential.
  std::string NodeAuthWarning() const;
  // What to dial cluster peers with (router -> nodes, nodes -> Registry):
  // TLS only under mutual TLS (a server certificate alone secures clients,
  // and peers could not verify it); the node token as call_token (without
  // one, the legacy shared API key).
  Security ForPeers() const;

  // The tenant of a client that presented `bearer` (nullopt: no
  // credential). UNAUTHENTICATED when API keys are configured and it is
  // none of them. Without API keys every client is tenant "anon".
  absl::StatusOr<std::string> ClientTenant(std::optional<std::string_view> bearer) const;
  // The node credential check of the Registry and Node services (`service`
  // names it in messages). Under mutual TLS a verified client certificate is
  // required (`peer_verified`). With a node token, the bearer must be it: a
  // client API key is PERMISSION_DENIED, anything else UNAUTHENTICATED.
  // Without one (legacy), any client API key is accepted, or anyone when
  // there are none.
  absl::Status CheckNode(std::optional<std::string_view> bearer, bool peer_verified,
                         std::string_view service) const;
  // Who may read /metrics: a client API key or the node token (anyone when
  // neither is configured).
  bool AllowsMetrics(std::optional<std::string_view> bearer) const;
};

// The token of an `authorization` value "Bearer <token>" (scheme in any
// case); nullopt when absent or another scheme.
std::optional<std::string_view> BearerToken(std::optional<std::string_view> authorization);
// The stable tenant name of an API key: "t" and 16 hex digits of its
// SHA-256 (names the tenant in logs and namespaced request ids without
// revealing the key).
std::string TenantOfKey(std::string_view key);

// Which client certificates a TLS server asks for (when it has a CA).
enum class ClientCerts {
  kRequestAndVerify,  // optional; a presented certificate must verify (router: nodes do, clients
                      // need not)
  kRequireAndVerify,  // mandatory (nodes: only the router and peers call them)
};

struct ServerHandle {
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the bound port
};

// Builds and starts a server on `address` ("host:port") with the services,
// grpc.health.v1 and server reflection enabled; TLS when `security` has a
// certificate (credentials are checked by the services: AuthenticateClient,
// CheckNodeCall).
absl::StatusOr<ServerHandle> StartServer(const std::string& address,
                                         const std::vector<grpc::Service*>& services,
                                         const Security& security,
                                         ClientCerts client_certs = ClientCerts::kRequireAndVerify,
                                         int max_message_bytes = 64 << 20);
absl::StatusOr<ServerHandle> StartServer(const std::string& address,
                                         const std::vector<grpc::Service*>& services,
                                         int max_message_bytes = 64 << 20);

// Marks every service (and the overall server, "") SERVING or NOT_SERVING.
void SetServing(grpc::Server* server, bool serving);

// A channel with pdserve's defaults (keepalive, large messages); with
// `security`: TLS (showing our certificate when we have one) and
// `security.call_token` as the bearer token of every call.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const Security& security);

// The bearer token of a gRPC call's `authorization` metadata.
std::optional<std::string_view> CallBearer(const grpc::ServerContextBase& context);
// Security::ClientTenant for a gRPC call; `tenant` gets the caller's tenant.
grpc::Status AuthenticateClient(const grpc::ServerContextBase& context, const Security& security,
                                std::string* tenant);
// Security::CheckNode for a gRPC call (the certificate from its auth context).
grpc::Status CheckNodeCall(const grpc::ServerContextBase& context, const Security& security,
                           std::string_view service);

}  // namespace pdserve::rpc
