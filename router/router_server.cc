#include "router/router_server.h"

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "router/generate_call.h"
#include "router/node_client.h"
#include "rpc/convert.h"
#include "rpc/message_limits.h"
#include "rpc/model_fingerprint.h"
#include "tracing/metrics_handler.h"

namespace pdserve::router {
namespace {

// "models/SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1".
std::string DefaultModelName(const std::string& path) {
  std::string name = path.substr(path.find_last_of('/') + 1);
  if (name.size() > 5 && name.substr(name.size() - 5) == ".gguf") name.resize(name.size() - 5);
  return name;
}

grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context, grpc::Status status) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

class RefusedStream : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit RefusedStream(grpc::Status s) { Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

// Generate is a raw method: GenerateCall::Start parses the request itself.
class GenerationService final
    : public v1::Generation::WithRawCallbackMethod_Generate<
          v1::Generation::WithCallbackMethod_Abort<
              v1::Generation::WithCallbackMethod_GetModelInfo<v1::Generation::Service>>> {
 public:
  GenerationService(RouterContext* ctx, v1::ModelInfo info, const rpc::Security* security)
      : ctx_(ctx), info_(std::move(info)), security_(security) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override {
    std::string tenant;
    if (grpc::Status s = rpc::AuthenticateClient(*context, *security_, &tenant); !s.ok()) {
      return new RefusedStream(std::move(s));
    }
    return GenerateCall::Start(ctx_, context, request, tenant);
  }

  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override {
    std::string tenant;
    if (grpc::Status s = rpc::AuthenticateClient(*context, *security_, &tenant); !s.ok()) {
      return Refuse(context, std::move(s));
    }
    // Ids live in the caller's namespace: another tenant's request with the
    // same id is neither found nor touched.
    std::shared_ptr<GenerateCall> call;
    {
      absl::MutexLock lock(&ctx_->calls_mu);
      auto it = ctx_->calls.find(GenerateCall::ScopedId(tenant, request->request_id()));
      if (it != ctx_->calls.end()) call = it->second.lock();
    }
    response->set_found(call != nullptr);
    if (call) call->Abort();
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest*,
                                         v1::ModelInfo* response) override {
    std::string tenant;
    if (grpc::Status s = rpc::AuthenticateClient(*context, *security_, &tenant); !s.ok()) {
      return Refuse(context, std::move(s));
    }
    *response = info_;
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  RouterContext* ctx_;
  v1::ModelInfo info_;
  const rpc::Security* security_;
};

class RegistryService final : public v1::Registry::CallbackService {
 public:
  RegistryService(NodeRegistry* registry, int64_t heartbeat_ms, Dispatcher* dispatcher,
                  const rpc::Security* security)
      : registry_(registry),
        heartbeat_ms_(heartbeat_ms),
        dispatcher_(dispatcher),
        security_(security) {}

  // Nodes prove who they are with the node credential (the node token,
  // and under mutual TLS a certificate from the cluster's CA); a client API
  // key is refused (see rpc::Security::CheckNode).
  grpc::Status Allowed(const grpc::CallbackServerContext& context) const {
    return rpc::CheckNodeCall(context, *security_, "Registry");
  }

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const v1::RegisterRequest* request,
                                     v1::RegisterResponse* response) override {
    if (grpc::Status s = Allowed(*context); !s.ok()) return Refuse(context, std::move(s));
    absl::StatusOr<std::string> lease =
        registry_->Register(request->info(), request->load(), request->lease());
    if (lease.ok()) {
      response->set_heartbeat_interval_ms(heartbeat_ms_);
      response->set_lease(*lease);
      dispatcher_->Pump();
    } else {
      PDS_LOG(WARNING) << "Register refused from " << context->peer() << ": " << lease.status();
    }
    auto* reactor = context->DefaultReactor();
    reactor->Finish(rpc::ToGrpc(lease.status()));
    return reactor;
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override {
    if (grpc::Status s = Allowed(*context); !s.ok()) return Refuse(context, std::move(s));
    absl::Status s = registry_->Heartbeat(request->node_id(), request->lease(), request->load());
    // Unknown: `known` false tells the node to register again.
    response->set_known(s.ok());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(s.ok() || absl::IsNotFound(s) ? grpc::Status::OK : rpc::ToGrpc(s));
    return reactor;
  }

  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* context,
                                      const v1::ListNodesRequest*,
                                      v1::ListNodesResponse* response) override {
    if (grpc::Status s = Allowed(*context); !s.ok()) return Refuse(context, std::move(s));
    registry_->List(response);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Deregister(grpc::CallbackServerContext* context,
                                       const v1::DeregisterRequest* request,
                                       v1::DeregisterResponse*) override {
    if (grpc::Status s = Allowed(*context); !s.ok()) return Refuse(context, std::move(s));
    absl::Status s = registry_->Deregister(request->node_id(), request->lease());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(s.ok() || absl::IsNotFound(s) ? grpc::Status::OK : rpc::ToGrpc(s));
    return reactor;
  }

 private:
  NodeRegistry* registry_;
  int64_t heartbeat_ms_;
  Dispatcher* dispatcher_;
  const rpc::Security* security_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(const RouterOptions& options) {
  std::unique_ptr<RouterServer> r(new RouterServer());
  r->options_ = options;
  // Only metadata is read: the weights stay unmapped pages nobody touches.
  PDS_ASSIGN_OR_RETURN(r->vocab_file_, gguf::GgufFile::Open(options.model_path));
  PDS_ASSIGN_OR_RETURN(r->tokenizer_, Tokenizer::FromGguf(*r->vocab_file_));
  RouterContext& ctx = r->ctx_;
  ctx.config = options.config;
  ctx.prompt.tokenizer = r->tokenizer_.get();
  std::string_view tmpl = r->vocab_file_->GetStringOr("tokenizer.chat_template", "").value_or("");
  absl::StatusOr<ChatTemplate> chat = ChatTemplate::Detect(tmpl, ChatTokensOf(*r->tokenizer_));
  if (chat.ok()) {
    ctx.prompt.chat = *chat;
  } else if (!tmpl.empty()) {
    PDS_LOG(WARNING) << "chat requests disabled: " << chat.status().message();
  }
  absl::StatusOr<uint64_t> n_ctx = r->vocab_file_->GetUintOr(
      absl::StrCat(
          std::string(
              r->vocab_file_->GetStringOr("general.architecture", "llama").value_or("llama")),
          ".context_length"),
      2048);
  ctx.prompt.limits.n_ctx = static_cast<int32_t>(n_ctx.value_or(2048));
  ctx.prompt.limits.n_vocab = r->tokenizer_->n_vocab();

  PDS_ASSIGN_OR_RETURN(ctx.metrics, tracing::PdserveMetrics::Register(r->metrics_registry_));
  auto sel = r->metrics_registry_.AddHistogram(
      "pdserve:router_selection_seconds", "Time the router spends choosing nodes for a request",
      {1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2});
  if (sel.ok()) ctx.selection_seconds = (*sel)->Get();
  auto retries = r->metrics_registry_.AddCounter(
      "pdserve:router_retries_total",
      "Requests sent to another pair after a node failed before their first token");
  if (retries.ok()) ctx.retries = (*retries)->Get();
  auto migrations = r->metrics_registry_.AddCounter(
      "pdserve:router_migrations_total",
      "Streams continued token-exact on another pair after their node failed mid-stream");
  if (migrations.ok()) ctx.migrations = (*migrations)->Get();
  auto tracked = r->metrics_registry_.AddGauge(
      "pdserve:router_tracked_requests",
      "Requests the router holds state for (queued, running or streaming)");
  if (tracked.ok()) {
    RouterServer* raw = r.get();
    (*tracked)->Get()->SetCallback([raw] { return double(raw->tracked_calls()); });
  }

  r->registry_ = std::make_unique<NodeRegistry>(absl::Milliseconds(options.node_expiry_ms),
                                                absl::Milliseconds(options.node_probation_ms));
  // Nodes must serve the model whose tokenizer the router uses.
  r->fingerprint_ = rpc::ModelFingerprint(*r->vocab_file_);
  r->registry_->SetModelFingerprint(r->fingerprint_);
  PDS_ASSIGN_OR_RETURN(r->security_, rpc::Security::Load(options.security));
  const rpc::Security* security = &r->security_;
  if (std::string warning = security->NodeAuthWarning(); !warning.empty()) {
    PDS_LOG(WARNING) << "router: " << warning;
  }
  r->registry_->SetClientFactory([peer = security->ForPeers()](const std::string& address) {
    return std::make_shared<GrpcNodeClient>(rpc::MakeChannel(address, peer));
  });
  ctx.registry = r->registry_.get();
  r->dispatcher_ = std::make_unique<Dispatcher>(&ctx, std::make_unique<LeastLoadedPolicy>());
  ctx.dispatcher = r->dispatcher_.get();
  Dispatcher* dispatcher = r->dispatcher_.get();
  r->registry_->SetOnChange([dispatcher] { dispatcher->Pump(); });
  // Requests waiting are the dispatcher's queue, read when scraped: no
  // count kept beside it to drift.
  ctx.metrics.num_requests_waiting->SetCallback(
      [dispatcher] { return static_cast<double>(dispatcher->queued()); });

  if (!options.trace_file.empty()) {
    tracing::OtlpFileExporterOptions eo;
    eo.path = options.trace_file;
    eo.resource.service_name = "pdserve-router";
    PDS_ASSIGN_OR_RETURN(r->spans_, tracing::OtlpFileExporter::Open(eo));
    ctx.spans = r->spans_.get();
  }
  if (!options.timing_log.empty()) {
    ctx.timing_log = std::fopen(options.timing_log.c_str(), "a");
    if (ctx.timing_log == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot open --timing-log ", options.timing_log));
    }
  }

  v1::ModelInfo info;
  info.set_model(std::string(r->vocab_file_->GetStringOr("general.name", "").value_or("")));
  if (info.model().empty()) info.set_model(options.model_path);
  info.set_context_length(ctx.prompt.limits.n_ctx);
  info.set_vocab_size(r->tokenizer_->n_vocab());
  for (TokenId t : r->tokenizer_->eog_ids()) info.add_eos_token_ids(t);
  info.set_bos_token_id(r->tokenizer_->bos_id());
  info.set_fingerprint(r->fingerprint_);
  if (ctx.prompt.chat) info.set_chat_format(ctx.prompt.chat->name());

  r->services_.push_back(std::make_unique<GenerationService>(&ctx, info, security));
  r->services_.push_back(std::make_unique<RegistryService>(
      r->registry_.get(), options.heartbeat_interval_ms, r->dispatcher_.get(), security));
  std::vector<grpc::Service*> services;
  for (auto& s : r->services_) services.push_back(s.get());
  // Clients and nodes share the port: a certificate is asked for (nodes
  // show one) but not required (clients use the API key).
  PDS_ASSIGN_OR_RETURN(
      r->grpc_,
      rpc::StartServer(
          options.listen, services, *security, rpc::ClientCerts::kRequestAndVerify,
          rpc::ClientApiMaxMessageBytes(ctx.prompt.max_prompt_bytes, ctx.prompt.limits.n_ctx)));
  rpc::SetServing(r->grpc_.server.get(), true);

  if (options.metrics_port >= 0) {
    http::HttpServerOptions ho;
    ho.port = static_cast<uint16_t>(options.metrics_port);
    r->http_ = std::make_unique<http::HttpServer>(ho);
    // Metrics are behind the API key too; only health is open.
    tracing::AddMetricsRoute(
        *r->http_, r->metrics_registry_,
        [security](const http::HttpRequest& request) {
          return security->AllowsMetrics(rpc::BearerToken(request.Header("Authorization")));
        },
        "missing or invalid API key\n");
    r->http_->Handle("GET", "/health", [](const http::HttpRequest&) {
      return http::HttpResponse::Text(200, "ok\n");
    });
    RouterServer* raw = r.get();
    r->http_->Handle("GET", "/ready", [raw](const http::HttpRequest&) {
      const std::string why = raw->NotReadyReason();
      return why.empty() ? http::HttpResponse::Text(200, "ready\n")
                         : http::HttpResponse::Text(503, why + "\n");
    });
    PDS_RETURN_IF_ERROR(r->http_->Start());
  }
  if (options.http_port >= 0) {
    OpenAiOptions oo;
    oo.model_names.push_back(options.served_model_name.empty()
                                 ? DefaultModelName(options.model_path)
                                 : options.served_model_name);
    // The GGUF's own name works too.
    if (!info.model().empty() && info.model() != oo.model_names[0])
      oo.model_names.push_back(info.model());
    oo.chat_default_max_tokens = options.chat_default_max_tokens;
    oo.authenticate = [security](const http::HttpRequest& request) {
      return security->ClientTenant(rpc::BearerToken(request.Header("Authorization")));
    };
    RouterServer* raw = r.get();
    r->openai_ =
        std::make_unique<OpenAiFrontend>(&ctx, oo, [raw] { return raw->NotReadyReason(); });
    http::HttpServerOptions ho;
    ho.bind_address = options.http_bind;
    ho.port = static_cast<uint16_t>(options.http_port);
    ho.num_threads = std::max(1, options.http_threads);
    ho.max_body_bytes = options.http_max_body_bytes;
    ho.max_stream_buffer_bytes = options.http_max_stream_buffer_bytes;
    ho.socket_send_buffer_bytes = options.http_socket_send_buffer_bytes;
    ho.max_connections = options.http_max_connections;
    ho.header_timeout = absl::Milliseconds(options.http_header_timeout_ms);
    ho.read_timeout = absl::Milliseconds(options.http_read_timeout_ms);
    ho.idle_timeout = absl::Milliseconds(options.http_idle_timeout_ms);
    ho.tls_cert_file = options.security.cert_file;
    ho.tls_key_file = options.security.key_file;
    ho.error_response = [](int status, const std::string& message) {
      openai::ApiError e = openai::ErrorForStatus(2, message);
      e.http_status = status;
      e.type = "invalid_request_error";
      if (status == 413) e.code = "request_too_large";
      return ApiErrorResponse(e);
    };
    r->api_http_ = std::make_unique<http::HttpServer>(ho);
    r->openai_->Register(r->api_http_.get());
    PDS_RETURN_IF_ERROR(r->api_http_->Start());
  }
  r->housekeeping_ = std::thread([raw = r.get()] { raw->Housekeeping(); });
  PDS_LOG(INFO) << "router listening on port " << r->grpc_.port
                << (r->http_ ? absl::StrCat(", metrics on port ", r->http_->port()) : "")
                << (r->api_http_ ? absl::StrCat(", OpenAI API on port ", r->api_http_->port()) : "")
                << (security->tls() ? " (TLS)" : "") << "; model " << r->fingerprint_ << ", "
                << (security->api_keys.empty()
                        ? std::string("no API key")
                        : absl::StrCat(security->api_keys.size(), " API key(s)"))
                << (security->node_token.empty() ? "" : ", node token");
  return r;
}

size_t RouterServer::tracked_calls() {
  absl::MutexLock lock(&ctx_.calls_mu);
  return ctx_.calls.size();
}

int RouterServer::metrics_port() const { return http_ ? http_->port() : -1; }

int RouterServer::http_port() const { return api_http_ ? api_http_->port() : -1; }

std::string RouterServer::NotReadyReason() const {
  if (stop_.HasBeenNotified()) return "draining";
  const bool pair =
      registry_->HasRole(v1::NODE_ROLE_PREFILL) && registry_->HasRole(v1::NODE_ROLE_DECODE);
  if (!pair && !registry_->HasRole(v1::NODE_ROLE_MIXED)) {
    return "no prefill+decode pair or mixed node registered";
  }
  return "";
}

namespace {
// Starts one NodeClient poll and waits for its answer (the poll's deadline
// bounds the wait).
template <typename T, typename StartFn>
absl::StatusOr<T> AwaitPoll(StartFn start) {
  absl::Notification answered;
  absl::Status status;
  T value;
  start([&](const absl::Status& s, const T& v) {
    status = s;
    value = v;
    answered.Notify();
  });
  answered.WaitForNotification();
  if (!status.ok()) return status;
  return value;
}
}  // namespace

// Drops silent nodes and polls statically configured ones.
void RouterServer::Housekeeping() {
  const absl::Duration period =
      absl::Milliseconds(std::max<int64_t>(50, options_.heartbeat_interval_ms / 2));
  while (!stop_.WaitForNotificationWithTimeout(period)) {
    for (const std::string& addr : options_.static_nodes) {
      GrpcNodeClient client(rpc::MakeChannel(addr, security_.ForPeers()));
      NodeCallOptions poll;
      poll.deadline = absl::Now() + absl::Seconds(2);
      absl::StatusOr<v1::NodeInfo> info =
          AwaitPoll<v1::NodeInfo>([&](auto done) { client.GetInfo(poll, std::move(done)); });
      if (!info.ok()) continue;
      poll.deadline = absl::Now() + absl::Seconds(2);
      absl::StatusOr<v1::NodeLoad> load =
          AwaitPoll<v1::NodeLoad>([&](auto done) { client.GetLoad(poll, std::move(done)); });
      if (!load.ok()) continue;
      std::string& lease = static_leases_[addr];
      if (!registry_->Heartbeat(info->node_id(), lease, *load).ok()) {
        absl::StatusOr<std::string> granted = registry_->Register(*info, *load, lease);
        if (granted.ok()) {
          lease = *granted;
        } else {
          PDS_LOG(WARNING) << "static node " << addr << ": " << granted.status();
        }
      }
    }
    // Streams on a node that stopped heartbeating (frozen, partitioned) or
    // whose engine stalls move to another pair; the rest are left alone.
    std::vector<std::pair<std::string, absl::Status>> lost;
    for (const std::string& id : registry_->Expire()) {
      lost.emplace_back(id, absl::UnavailableError(
                                absl::StrCat("no heartbeat for ", options_.node_expiry_ms, " ms")));
    }
    for (const NodeView& n : registry_->Snapshot()) {
      if (n.load.stalled_ms() >= ctx_.config.migrate_after_stall_ms) {
        lost.emplace_back(n.id, absl::UnavailableError(absl::StrCat("engine stalled for ",
                                                                    n.load.stalled_ms(), " ms")));
      }
    }
    if (!lost.empty()) MoveCallsOff(lost);
  }
}

void RouterServer::MoveCallsOff(const std::vector<std::pair<std::string, absl::Status>>& lost) {
  std::vector<std::shared_ptr<GenerateCall>> calls;
  {
    absl::MutexLock lock(&ctx_.calls_mu);
    for (const auto& [id, weak] : ctx_.calls) {
      if (std::shared_ptr<GenerateCall> c = weak.lock()) calls.push_back(std::move(c));
    }
  }
  // Outside calls_mu: a call that ends takes it to leave the map.
  for (const std::shared_ptr<GenerateCall>& c : calls) {
    for (const auto& [node, why] : lost) c->NodeLost(node, why);
  }
}

void RouterServer::Shutdown(absl::Duration grace) {
  if (stop_.HasBeenNotified()) return;
  rpc::SetServing(grpc_.server.get(), false);
  stop_.Notify();
  // Both fronts drain at once: HTTP stops accepting and lets open streams
  // finish while gRPC does the same.
  std::thread api_drain;
  if (api_http_) api_drain = std::thread([this, grace] { api_http_->Stop(grace); });
  grpc_.server->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
  if (api_drain.joinable()) api_drain.join();
  if (housekeeping_.joinable()) housekeeping_.join();
  if (http_) http_->Stop(absl::Seconds(1));
  if (spans_) spans_->Flush();
}

void RouterServer::Wait() { stop_.WaitForNotification(); }

RouterServer::~RouterServer() {
  Shutdown(absl::ZeroDuration());
  ctx_.metrics.num_requests_waiting->SetCallback(nullptr);
  dispatcher_.reset();
  if (ctx_.timing_log != nullptr) std::fclose(ctx_.timing_log);
}

}  // namespace pdserve::router
