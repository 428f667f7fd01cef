#include "rpc/server_util.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include <openssl/sha.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/secure_random.h"

namespace pdserve::rpc {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " file '", path, "'"));
  std::ostringstream s;
  s << in.rdbuf();
  if (s.str().empty())
    return absl::InvalidArgumentError(absl::StrCat(what, " file '", path, "' is empty"));
  return s.str();
}

// Adds `authorization: Bearer <token>` to every call of a channel.
class ApiKeyInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit ApiKeyInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *header_);
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;
};

class ApiKeyInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit ApiKeyInterceptorFactory(const std::string& key)
      : header_(absl::StrCat("Bearer ", key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new ApiKeyInterceptor(&header_);
  }

 private:
  const std::string header_;
};

// A credential goes into an HTTP/2 header: visible ASCII only.
absl::Status CheckTokenChars(std::string_view token, const std::string& what) {
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat(what,
                       " holds a character other than visible ASCII (it must fit an "
                       "'authorization: Bearer' header)"));
    }
  }
  return absl::OkStatus();
}

absl::Status AddApiKey(Security* s, std::string key, const std::string& where) {
  if (absl::Status st = CheckTokenChars(key, where); !st.ok()) return st;
  for (const std::string& k : s->api_keys) {
    if (k == key) return absl::OkStatus();  // the same key twice is one tenant
  }
  s->tenants.push_back(TenantOfKey(key));
  s->api_keys.push_back(std::move(key));
  return absl::OkStatus();
}

bool IsApiKey(const Security& s, std::string_view token) {
  bool found = false;
  for (const std::string& k : s.api_keys) found |= pdserve::SecretEquals(token, k);
  return found;
}

}  // namespace

std::optional<std::string_view> BearerToken(std::optional<std::string_view> authorization) {
  constexpr std::string_view kBearer = "Bearer ";
  if (!authorization || authorization->size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(authorization->data(), kBearer.size()),
                              absl::string_view(kBearer.data(), kBearer.size()))) {
    return std::nullopt;
  }
  return authorization->substr(kBearer.size());
}

std::string TenantOfKey(std::string_view key) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), digest);
  return absl::StrCat(
      "t", absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 8)));
}

absl::StatusOr<Security> Security::Load(const SecurityFiles& files) {
  Security s;
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!files.ca_file.empty() && files.cert_file.empty()) {
    return absl::InvalidArgumentError("--tls-ca needs --tls-cert and --tls-key (mutual TLS)");
  }
  if (!files.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadFile(files.cert_file, "--tls-cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(files.key_file, "--tls-key");
    if (!key.ok()) return key.status();
    s.cert_pem = std::move(*cert);
    s.key_pem = std::move(*key);
  }
  if (!files.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(files.ca_file, "--tls-ca");
    if (!ca.ok()) return ca.status();
    s.ca_pem = std::move(*ca);
  }
  s.server_name = files.server_name;

  if (!files.api_key.empty()) {
    if (absl::Status st = AddApiKey(&s, files.api_key, "--api-key"); !st.ok()) return st;
  }
  if (!files.api_key_file.empty()) {
    absl::StatusOr<std::string> text = ReadFile(files.api_key_file, "--api-key-file");
    if (!text.ok()) return text.status();
    int line_no = 0;
    const size_t before = s.api_keys.size();
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      ++line_no;
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || line[0] == '#') continue;
      absl::Status st =
          AddApiKey(&s, std::string(line), absl::StrCat("--api-key-file line ", line_no));
      if (!st.ok()) return st;
    }
    if (s.api_keys.size() == before) {
      return absl::InvalidArgumentError(
          absl::StrCat("--api-key-file '", files.api_key_file, "' holds no key"));
    }
  }

  if (!files.node_token.empty() && !files.node_token_file.empty()) {
    return absl::InvalidArgumentError(
        "the node token comes from --node-token-file or PDSERVE_NODE_TOKEN, not both");
  }
  s.node_token = std::string(absl::StripAsciiWhitespace(files.node_token));
  if (!files.node_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadFile(files.node_token_file, "--node-token-file");
    if (!token.ok()) return token.status();
    s.node_token = std::string(absl::StripAsciiWhitespace(*token));
    if (s.node_token.empty())
      return absl::InvalidArgumentError("--node-token-file holds only whitespace");
  }
  if (absl::Status st = CheckTokenChars(s.node_token, "the node token"); !st.ok()) return st;
  if (!s.node_token.empty() && IsApiKey(s, s.node_token)) {
    return absl::InvalidArgumentError(
        "the node token equals a client API key: nodes and clients need separate credentials");
  }
  return s;
}

std::string Security::NodeAuthWarning() const {
  if (has_node_credential()) return "";
  return absl::StrCat(
      "no node credential (--node-token-file, PDSERVE_NODE_TOKEN or mutual TLS): the Registry "
      "and Node services accept ",
      api_keys.empty() ? "anyone who reaches them"
                       : "any client API key (a client could register as a node)",
      "; set a node token outside local testing");
}

Security Security::ForPeers() const {
  Security peer;
  if (mutual()) peer = *this;
  peer.call_token = !node_token.empty() ? node_token
                    : !api_keys.empty() ? api_keys.front()  // legacy: one shared key
                                        : "";
  return peer;
}

absl::StatusOr<std::string> Security::ClientTenant(std::optional<std::string_view> bearer) const {
  if (api_keys.empty()) return std::string("anon");
  if (!bearer) {
    return absl::UnauthenticatedError(
        "missing API key: send 'authorization: Bearer <key>' (HTTP: 'Authorization: Bearer "
        "<key>')");
  }
  // Every key is compared, each in constant time: timing reveals no key.
  size_t match = api_keys.size();
  for (size_t i = 0; i < api_keys.size(); ++i) {
    if (pdserve::SecretEquals(*bearer, api_keys[i])) match = i;
  }
  if (match == api_keys.size()) return absl::UnauthenticatedError("invalid API key");
  return tenants[match];
}

absl::Status Security::CheckNode(std::optional<std::string_view> bearer, bool peer_verified,
                                 std::string_view service_name) const {
  const std::string service(service_name);
  if (mutual() && !peer_verified) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the ", service, " service needs a client certificate signed by the cluster's CA"));
  }
  if (!node_token.empty()) {
    if (bearer && pdserve::SecretEquals(*bearer, node_token)) return absl::OkStatus();
    if (bearer && IsApiKey(*this, *bearer)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the ", service,
          " service does not accept client API keys: only the router and the nodes may call it, "
          "with the node token"));
    }
    return absl::UnauthenticatedError(absl::StrCat(
        "the ", service, " service needs the node token ('authorization: Bearer <node token>')"));
  }
  // Legacy: one key shared by clients and nodes.
  if (api_keys.empty()) return absl::OkStatus();
  if (bearer && IsApiKey(*this, *bearer)) return absl::OkStatus();
  return absl::UnauthenticatedError(
      bearer ? "invalid API key" : "missing API key: send 'authorization: Bearer <key>' metadata");
}

bool Security::AllowsMetrics(std::optional<std::string_view> bearer) const {
  if (api_keys.empty() && node_token.empty()) return true;
  if (!bearer) return false;
  return IsApiKey(*this, *bearer) |
         (!node_token.empty() && pdserve::SecretEquals(*bearer, node_token));
}

absl::StatusOr<ServerHandle> StartServer(const std::string& address,
                                         const std::vector<grpc::Service*>& services,
                                         int max_message_bytes) {
  return StartServer(address, services, Security(), ClientCerts::kRequireAndVerify,
                     max_message_bytes);
}

absl::StatusOr<ServerHandle> StartServer(const std::string& address,
                                         const std::vector<grpc::Service*>& services,
                                         const Security& security, ClientCerts client_certs,
                                         int max_message_bytes) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ServerHandle h;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (security.tls()) {
    grpc::SslServerCredentialsOptions opts(
        !security.mutual() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
        : client_certs == ClientCerts::kRequireAndVerify
            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
    opts.pem_root_certs = security.ca_pem;
    opts.pem_key_cert_pairs.push_back({security.key_pem, security.cert_pem});
    creds = grpc::SslServerCredentials(opts);
  }
  builder.AddListeningPort(address, creds, &h.port);
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Keepalive from this side too: a peer cut off mid-stream is noticed in seconds.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  for (grpc::Service* s : services) builder.RegisterService(s);
  h.server = builder.BuildAndStart();
  if (h.server == nullptr || h.port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address,
                     security.tls() ? " (or the TLS certificate/key are not a valid pair)" : ""));
  }
  return h;
}

void SetServing(grpc::Server* server, bool serving) {
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
    health->SetServingStatus(serving);
  }
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  return MakeChannel(address, Security());
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const Security& security) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Peers in a cluster come back in seconds (a restarted router or node):
  // reconnect within ~1 s instead of gRPC's default backoff of up to 120 s.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (security.tls() || !security.ca_pem.empty()) {
    grpc::SslCredentialsOptions opts;
    opts.pem_root_certs = security.ca_pem;  // empty: the system's roots
    opts.pem_private_key = security.key_pem;
    opts.pem_cert_chain = security.cert_pem;
    creds = grpc::SslCredentials(opts);
    if (!security.server_name.empty()) {
      args.SetSslTargetNameOverride(security.server_name);
    }
  }
  if (security.call_token.empty()) return grpc::CreateCustomChannel(address, creds, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<ApiKeyInterceptorFactory>(security.call_token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, creds, args,
                                                                 std::move(interceptors));
}

std::optional<std::string_view> CallBearer(const grpc::ServerContextBase& context) {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return std::nullopt;
  return BearerToken(std::string_view(it->second.data(), it->second.size()));
}

grpc::Status AuthenticateClient(const grpc::ServerContextBase& context, const Security& security,
                                std::string* tenant) {
  absl::StatusOr<std::string> t = security.ClientTenant(CallBearer(context));
  if (!t.ok()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(t.status().message()));
  }
  *tenant = std::move(*t);
  return grpc::Status::OK;
}

grpc::Status CheckNodeCall(const grpc::ServerContextBase& context, const Security& security,
                           std::string_view service) {
  bool verified = false;
  if (security.mutual()) {
    std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
    verified = auth != nullptr && auth->IsPeerAuthenticated();
  }
  absl::Status s = security.CheckNode(CallBearer(context), verified, service);
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace pdserve::rpc
