// Building blocks every pdserve gRPC server and client shares: health
// checking, reflection, listening on a host:port (port 0 = ephemeral), and
// the security of both ends: TLS (mutual between router and nodes) and the
// API key carried as `authorization: Bearer <key>` metadata.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pdserve::rpc {

// Where a process's TLS material and API key come from (flags).
struct SecurityFiles {
  std::string cert_file;     // PEM certificate chain: served, and shown to peers (mTLS)
  std::string key_file;      // PEM private key of cert_file
  std::string ca_file;       // PEM CA bundle that peers' certificates must chain to
  std::string server_name;   // name peers' certificates must carry (default: the host dialled)
  std::string api_key;       // required from callers and sent to peers; empty: none
  std::string api_key_file;  // same, read from a file (a mounted secret)
};

// Loaded security settings. Default-constructed: plaintext, no API key.
struct Security {
  std::string cert_pem, key_pem, ca_pem;
  std::string server_name;
  std::string api_key;

  // Reads the files; InvalidArgument names the file that is missing or bad.
  static absl::StatusOr<Security> Load(const SecurityFiles& files);
  bool tls() const { return !cert_pem.empty(); }
  bool mutual() const { return tls() && !ca_pem.empty(); }
  // What to dial cluster peers with: TLS only under mutual TLS (a server
  // certificate alone secures clients, and peers could not verify it), the
  // API key always.
  Security ForPeers() const;
};

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
// certificate (the API key is checked by the services: see CheckApiKey).
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
// `security`: TLS (showing our certificate when we have one) and the API key
// on every call.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const Security& security);

// UNAUTHENTICATED unless the call carries `authorization: Bearer <api_key>`
// (always OK when api_key is empty). Compares in constant time.
grpc::Status CheckApiKey(const grpc::ServerContextBase& context, const std::string& api_key);
// UNAUTHENTICATED unless the peer showed a certificate that verified against
// our CA (always OK when `security` is not mutual TLS).
grpc::Status CheckPeerCertificate(const grpc::ServerContextBase& context, const Security& security);

}  // namespace pdserve::rpc
