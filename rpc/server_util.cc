#include "rpc/server_util.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

// Adds `authorization: Bearer <key>` to every call of a channel.
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

}  // namespace

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
  if (!files.api_key.empty() && !files.api_key_file.empty()) {
    return absl::InvalidArgumentError("give --api-key or --api-key-file, not both");
  }
  s.api_key = files.api_key;
  if (!files.api_key_file.empty()) {
    absl::StatusOr<std::string> key = ReadFile(files.api_key_file, "--api-key-file");
    if (!key.ok()) return key.status();
    s.api_key = std::string(absl::StripAsciiWhitespace(*key));
    if (s.api_key.empty())
      return absl::InvalidArgumentError("--api-key-file holds only whitespace");
  }
  return s;
}

Security Security::ForPeers() const {
  if (mutual()) return *this;
  Security peer;
  peer.api_key = api_key;
  return peer;
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
  if (security.api_key.empty()) return grpc::CreateCustomChannel(address, creds, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<ApiKeyInterceptorFactory>(security.api_key));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, creds, args,
                                                                 std::move(interceptors));
}

grpc::Status CheckApiKey(const grpc::ServerContextBase& context, const std::string& api_key) {
  if (api_key.empty()) return grpc::Status::OK;
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing API key: send 'authorization: Bearer <key>' metadata");
  }
  const std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(std::string(value.substr(0, kBearer.size())), std::string(kBearer)) ||
      !pdserve::SecretEquals(value.substr(kBearer.size()), api_key)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid API key");
  }
  return grpc::Status::OK;
}

grpc::Status CheckPeerCertificate(const grpc::ServerContextBase& context,
                                  const Security& security) {
  if (!security.mutual()) return grpc::Status::OK;
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this call needs a client certificate signed by the cluster's CA");
  }
  return grpc::Status::OK;
}

}  // namespace pdserve::rpc
