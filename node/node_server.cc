#include "node/node_server.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "pdserve/v1/node.grpc.pb.h"
#include "rpc/convert.h"
#include "rpc/message_limits.h"
#include "rpc/model_fingerprint.h"
#include "tracing/metrics_handler.h"
#include "transport/kv_transport_factory.h"

namespace pdserve::node {
namespace {

v1::NodeRole ToProtoRole(NodeRole r) {
  switch (r) {
    case NodeRole::kPrefill:
      return v1::NODE_ROLE_PREFILL;
    case NodeRole::kDecode:
      return v1::NODE_ROLE_DECODE;
    case NodeRole::kMixed:
      return v1::NODE_ROLE_MIXED;
  }
  return v1::NODE_ROLE_UNSPECIFIED;
}

grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx, const std::string& what) {
  auto* r = ctx->DefaultReactor();
  r->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, what));
  return r;
}

template <typename T>
class RefusedStream : public grpc::ServerWriteReactor<T> {
 public:
  explicit RefusedStream(grpc::Status s) { this->Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

// The Node service: routes each RPC to the handler of this node's role.
class NodeService final : public v1::Node::CallbackService {
 public:
  NodeService(NodeServer* server, prefill::PrefillHandler* prefill, decode::DecodeHandler* decode,
              GenerateHandler* generate, const std::atomic<bool>* draining,
              const rpc::Security* security)
      : server_(server),
        prefill_(prefill),
        decode_(decode),
        generate_(generate),
        draining_(draining),
        security_(security) {}

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* ctx, const v1::PrefillRequest* req,
                                    v1::PrefillResponse* resp) override {
    if (grpc::Status s = Check(*ctx); !s.ok()) return Finish(ctx, std::move(s));
    if (prefill_ == nullptr) return Refuse(ctx, "this node does not prefill");
    if (draining_->load()) return Unavailable(ctx);
    return prefill_->Prefill(ctx, req, resp);
  }

  grpc::ServerWriteReactor<v1::DecodeEvent>* Admit(grpc::CallbackServerContext* ctx,
                                                   const v1::AdmitRequest* req) override {
    if (grpc::Status s = Check(*ctx); !s.ok())
      return new RefusedStream<v1::DecodeEvent>(std::move(s));
    if (decode_ == nullptr) {
      return new RefusedStream<v1::DecodeEvent>(
          grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this node does not decode"));
    }
    if (draining_->load()) {
      return new RefusedStream<v1::DecodeEvent>(
          grpc::Status(grpc::StatusCode::UNAVAILABLE, "node is draining"));
    }
    return decode_->Admit(ctx, req);
  }

  grpc::ServerWriteReactor<v1::DecodeEvent>* Generate(grpc::CallbackServerContext* ctx,
                                                      const v1::NodeRequest* req) override {
    if (grpc::Status s = Check(*ctx); !s.ok())
      return new RefusedStream<v1::DecodeEvent>(std::move(s));
    if (generate_ == nullptr) {
      return new RefusedStream<v1::DecodeEvent>(
          grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this node is not a mixed node"));
    }
    if (draining_->load()) {
      return new RefusedStream<v1::DecodeEvent>(
          grpc::Status(grpc::StatusCode::UNAVAILABLE, "node is draining"));
    }
    return generate_->Generate(ctx, req);
  }

  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* ctx, const v1::NodeAbortRequest* req,
                                  v1::NodeAbortResponse* resp) override {
    if (grpc::Status s = Check(*ctx); !s.ok()) return Finish(ctx, std::move(s));
    if (prefill_ != nullptr) {
      // Through the handler: a transfer still reading the blocks stops first.
      resp->set_found(prefill_->Abort(req->request_id(), req->transfer_id()));
    } else {
      server_->engine().Abort(req->request_id());
      resp->set_found(true);
    }
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* ctx, const v1::GetLoadRequest*,
                                    v1::NodeLoad* resp) override {
    if (grpc::Status s = Check(*ctx); !s.ok()) return Finish(ctx, std::move(s));
    *resp = server_->Load();
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* ctx, const v1::GetLoadRequest*,
                                    v1::NodeInfo* resp) override {
    if (grpc::Status s = Check(*ctx); !s.ok()) return Finish(ctx, std::move(s));
    *resp = server_->Info();
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

 private:
  // Only the router (and peers) call a node: the node credential, never a
  // client API key (under mTLS the handshake already required a certificate
  // from our CA).
  grpc::Status Check(const grpc::CallbackServerContext& ctx) const {
    return rpc::CheckNodeCall(ctx, *security_, "Node");
  }
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx, grpc::Status s) {
    auto* r = ctx->DefaultReactor();
    r->Finish(std::move(s));
    return r;
  }
  grpc::ServerUnaryReactor* Unavailable(grpc::CallbackServerContext* ctx) {
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "node is draining"));
    return r;
  }
  NodeServer* server_;
  prefill::PrefillHandler* prefill_;
  decode::DecodeHandler* decode_;
  GenerateHandler* generate_;
  const std::atomic<bool>* draining_;
  const rpc::Security* security_;
};

}  // namespace

const char* RoleName(NodeRole role) {
  switch (role) {
    case NodeRole::kPrefill:
      return "prefill";
    case NodeRole::kDecode:
      return "decode";
    case NodeRole::kMixed:
      return "mixed";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<NodeServer>> NodeServer::Start(const NodeOptions& options,
                                                              std::shared_ptr<const Model> model) {
  std::unique_ptr<NodeServer> n(new NodeServer());
  n->options_ = options;
  n->model_ = std::move(model);
  PDS_ASSIGN_OR_RETURN(n->security_, rpc::Security::Load(options.security));
  if (std::string warning = n->security_.NodeAuthWarning(); !warning.empty()) {
    PDS_LOG(WARNING) << RoleName(options.role) << " node: " << warning;
  }
  // Only the syntax here: a Service name may resolve later.
  PDS_RETURN_IF_ERROR(RouterTargets(options.router, "").status());
  if (!options.router_service.empty()) {
    PDS_RETURN_IF_ERROR(RouterTargets("", options.router_service).status());
  }
  n->fingerprint_ = rpc::ModelFingerprint(n->model_->file());
  n->progress_ = ProgressMonitor(options.stall_timeout_ms * 1000000);
  PDS_ASSIGN_OR_RETURN(n->engine_, Engine::Create(n->model_, options.engine));
  PDS_ASSIGN_OR_RETURN(n->metrics_, tracing::PdserveMetrics::Register(n->metrics_registry_));
  Engine* engine = n->engine_.get();
  n->metrics_.kv_cache_usage_perc->SetCallback([engine] { return engine->Stats().kv.usage(); });
  n->metrics_.num_requests_running->SetCallback(
      [engine] { return double(engine->Stats().n_running); });
  n->metrics_.num_requests_waiting->SetCallback(
      [engine] { return double(engine->Stats().n_waiting); });
  n->metrics_.queued_prefill_tokens->SetCallback(
      [engine] { return double(engine->Stats().queued_prefill_tokens); });

  // Bind the gRPC port first: it names the node.
  const tracing::PdserveMetrics* metrics = &n->metrics_;
  // Where KV lives decides how it travels: host memory over tcp; device
  // memory over CUDA IPC (same host), NCCL, or tcp staged through pinned
  // host buffers (transport/kv_transport_factory.h, --kv-transport).
  transport::KvTransportConfig kv;
  PDS_ASSIGN_OR_RETURN(kv.kind, transport::ParseKvTransportKind(options.kv_transport));
  if (absl::StartsWith(options.engine.device, "cuda")) {
    kv.gpu_device = 0;
    if (options.engine.device.size() > 5 &&
        !absl::SimpleAtoi(options.engine.device.substr(5), &kv.gpu_device)) {
      return absl::InvalidArgumentError("--device must be cpu, cuda or cuda:N");
    }
  }
  kv.checksum = options.kv_checksum;
  if (options.kv_loopback != nullptr) {
    if (options.role == NodeRole::kPrefill) {
      n->sender_ = std::make_unique<transport::LoopbackKvSender>(options.kv_loopback);
    } else if (options.role == NodeRole::kDecode) {
      PDS_ASSIGN_OR_RETURN(
          n->receiver_,
          transport::LoopbackKvReceiver::Create(
              options.kv_loopback, absl::StrCat("node-", reinterpret_cast<uintptr_t>(n.get()))));
    }
  } else {
    switch (options.role) {
      case NodeRole::kPrefill: {
        // IPC exports the KV storage itself: one allocation per cache.
        const KvCache& cache = engine->cache();
        kv.kv_regions.push_back({cache.storage(), cache.storage_bytes()});
        PDS_ASSIGN_OR_RETURN(n->sender_, transport::MakeKvSender(kv));
        break;
      }
      case NodeRole::kDecode: {
        // Only the advertised address by default: the KV port is for prefill nodes.
        kv.listen_host =
            options.kv_listen_host.empty() ? options.advertise_host : options.kv_listen_host;
        kv.port = static_cast<uint16_t>(options.kv_port);
        kv.advertise_host = options.advertise_host;
        PDS_ASSIGN_OR_RETURN(const transport::KvTransportKind resolved,
                             transport::ResolveReceiverKind(kv));
        PDS_ASSIGN_OR_RETURN(n->receiver_, transport::MakeKvReceiver(kv));
        PDS_LOG(INFO) << "decode node: KV over " << transport::KvTransportKindName(resolved)
                      << (kv.gpu_device >= 0 && resolved == transport::KvTransportKind::kTcp
                              ? " (host-staged)"
                              : "");
        break;
      }
      case NodeRole::kMixed:
        break;
    }
  }
  // Handlers name the node in the timings they report: the configured id,
  // or the role until the id (which needs the bound port) is known.
  n->id_ = options.node_id;
  std::string name = n->id_.empty() ? std::string(RoleName(options.role)) : n->id_;
  if (options.role == NodeRole::kPrefill) {
    n->prefill_ =
        std::make_unique<prefill::PrefillHandler>(engine, n->sender_.get(), name, metrics);
  } else if (options.role == NodeRole::kDecode) {
    n->decode_ = std::make_unique<decode::DecodeHandler>(engine, n->receiver_.get(), name, metrics);
  } else {
    n->generate_ = std::make_unique<GenerateHandler>(engine, name, metrics);
  }
  n->service_ = std::make_unique<NodeService>(n.get(), n->prefill_.get(), n->decode_.get(),
                                              n->generate_.get(), &n->draining_, &n->security_);
  PDS_ASSIGN_OR_RETURN(n->grpc_,
                       rpc::StartServer(options.listen, {n->service_.get()}, n->security_,
                                        rpc::ClientCerts::kRequireAndVerify,
                                        rpc::NodeApiMaxMessageBytes(engine->limits().n_ctx)));
  if (n->id_.empty()) n->id_ = absl::StrCat(RoleName(options.role), "-", n->grpc_.port);
  if (!options.step_log_dir.empty()) {
    PDS_ASSIGN_OR_RETURN(n->step_log_, StepLog::Open(absl::StrCat(options.step_log_dir, "/", n->id_,
                                                                  ".steps.jsonl")));
    engine->SetStepObserver(n->step_log_.get());
  }
  engine->Start();
  rpc::SetServing(n->grpc_.server.get(), true);

  if (options.metrics_port >= 0) {
    http::HttpServerOptions ho;
    ho.port = static_cast<uint16_t>(options.metrics_port);
    n->http_ = std::make_unique<http::HttpServer>(ho);
    // Metrics are behind the API key too; only health is open.
    const rpc::Security* security = &n->security_;
    tracing::AddMetricsRoute(
        *n->http_, n->metrics_registry_,
        [security](const http::HttpRequest& request) {
          return security->AllowsMetrics(rpc::BearerToken(request.Header("Authorization")));
        },
        "missing or invalid node token or API key\n");
    const NodeServer* raw = n.get();
    n->http_->Handle("GET", "/health", [raw](const http::HttpRequest&) {
      const std::string why = raw->NotLiveReason();
      return why.empty() ? http::HttpResponse::Text(200, "ok\n")
                         : http::HttpResponse::Text(503, why + "\n");
    });
    n->http_->Handle("GET", "/ready", [raw](const http::HttpRequest&) {
      const std::string why = raw->NotReadyReason();
      return why.empty() ? http::HttpResponse::Text(200, "ready\n")
                         : http::HttpResponse::Text(503, why + "\n");
    });
    PDS_RETURN_IF_ERROR(n->http_->Start());
  }
  n->heartbeats_ = std::thread([raw = n.get()] { raw->Heartbeats(); });
  PDS_LOG(INFO) << RoleName(options.role) << " node " << n->id_ << " listening on port "
                << n->grpc_.port << (n->receiver_ ? absl::StrCat(", KV at ", n->kv_endpoint()) : "")
                << (n->http_ ? absl::StrCat(", metrics on port ", n->http_->port()) : "");
  return n;
}

std::string NodeServer::address() const {
  return absl::StrCat(options_.advertise_host, ":", grpc_.port);
}

std::string NodeServer::kv_endpoint() const {
  if (!receiver_) return "";
  return options_.kv_advertise.empty() ? receiver_->endpoint() : options_.kv_advertise;
}

int NodeServer::metrics_port() const { return http_ ? http_->port() : -1; }

v1::NodeLoad NodeServer::Load() const {
  const EngineStats s = engine_->Stats();
  v1::NodeLoad l;
  l.set_running(s.n_running);
  l.set_waiting(s.n_waiting);
  l.set_awaiting_kv(s.n_awaiting_kv);
  l.set_free_kv_blocks(s.kv.free_blocks);
  l.set_total_kv_blocks(s.kv.total_blocks);
  l.set_queued_prefill_tokens(s.queued_prefill_tokens);
  l.set_kv_usage(s.kv.usage());
  l.set_prefix_hit_tokens(s.kv.prefix_hit_tokens);
  l.set_prefix_query_tokens(s.kv.prefix_query_tokens);
  l.set_committed_kv_blocks(s.committed_kv_blocks);
  l.set_draining(draining_.load());
  if (stalled_.load()) l.set_stalled_ms(std::max<int64_t>(1, stalled_for_ms_.load()));
  return l;
}

v1::NodeInfo NodeServer::Info() const {
  v1::NodeInfo info;
  info.set_node_id(id_);
  info.set_role(ToProtoRole(options_.role));
  info.set_address(address());
  info.set_kv_endpoint(kv_endpoint());
  info.set_model_fingerprint(fingerprint_);
  info.set_block_size(engine_->cache().config().block_size);
  info.set_kv_dtype(options_.kv_dtype_name);
  info.set_context_length(model_->n_ctx());
  return info;
}

// Keeps a RouterLink per router address (they register and heartbeat on
// their own threads), re-resolving --router-service periodically; feeds the
// counters and watches the engine's progress.
void NodeServer::Heartbeats() {
  constexpr absl::Duration kTick = absl::Milliseconds(100);
  absl::Time next_resolve = absl::InfinitePast();
  absl::Time next_watch = absl::InfinitePast();
  while (!stop_.HasBeenNotified()) {
    const absl::Time now = absl::Now();
    if (!options_.test_stall_file.empty()) {
      std::error_code ec;
      engine_->SetPausedForTest(std::filesystem::exists(options_.test_stall_file, ec));
    }
    if (now >= next_watch) {
      next_watch = now + absl::Milliseconds(250);
      const EngineStats s = engine_->Stats();
      metrics_.prefix_cache_hits_total->Increment(
          double(s.kv.prefix_hit_tokens - last_prefix_hits_));
      metrics_.prefix_cache_queries_total->Increment(
          double(s.kv.prefix_query_tokens - last_prefix_queries_));
      metrics_.prompt_tokens_total->Increment(
          double(s.prompt_tokens_computed - last_prompt_tokens_));
      last_prefix_hits_ = s.kv.prefix_hit_tokens;
      last_prefix_queries_ = s.kv.prefix_query_tokens;
      last_prompt_tokens_ = s.prompt_tokens_computed;
      WatchProgress();  // the links' heartbeats carry the stall
    }
    if (now >= next_resolve && !draining_.load()) {
      next_resolve = now + absl::Milliseconds(std::max<int64_t>(1000, options_.router_resolve_ms));
      UpdateRouterLinks();
    }
    stop_.WaitForNotificationWithTimeout(kTick);
  }
}

void NodeServer::UpdateRouterLinks() {
  // Start() checked the syntax.
  absl::StatusOr<std::vector<std::string>> targets = RouterTargets(options_.router, "");
  absl::StatusOr<std::vector<std::string>> resolved = RouterTargets("", options_.router_service);
  if (!targets.ok() || !resolved.ok()) return;
  // A name that resolves to nothing right now (a DNS hiccup, every router pod
  // restarting) drops no link: their routers would expire us meanwhile.
  const bool prune = options_.router_service.empty() || !resolved->empty();
  targets->insert(targets->end(), resolved->begin(), resolved->end());
  std::vector<std::unique_ptr<RouterLink>> gone;
  {
    absl::MutexLock lock(&links_mu_);
    for (auto it = links_.begin(); it != links_.end();) {
      if (prune && std::find(targets->begin(), targets->end(), it->first) == targets->end()) {
        PDS_LOG(INFO) << "node " << id_ << ": router " << it->first << " no longer listed";
        gone.push_back(std::move(it->second));
        it = links_.erase(it);
      } else {
        ++it;
      }
    }
    RouterLink::Hooks hooks;
    hooks.info = [this] { return Info(); };
    hooks.load = [this] { return Load(); };
    hooks.draining = [this] { return draining_.load(); };
    for (const std::string& t : *targets) {
      if (links_.contains(t)) continue;
      links_.emplace(t, std::make_unique<RouterLink>(t, security_.ForPeers(), hooks));
    }
  }
  gone.clear();  // joins their threads outside the lock
}

std::string NodeServer::NotReadyReason() const {
  if (draining_.load()) return "draining";
  if (stalled_.load()) {
    return absl::StrCat("engine stalled: queued work saw no step for ", stalled_for_ms_.load(),
                        " ms");
  }
  return "";
}

std::string NodeServer::NotLiveReason() const {
  const int64_t stalled_ms = stalled_for_ms_.load();
  if (!ProgressMonitor::Dead(stalled_ms * 1000000, options_.liveness_stall_timeout_ms * 1000000)) {
    return "";
  }
  return absl::StrCat("engine stalled: queued work saw no step for ", stalled_ms,
                      " ms (liveness limit ", options_.liveness_stall_timeout_ms, " ms)");
}

void NodeServer::WatchProgress() {
  const EngineStats s = engine_->Stats();
  const int64_t now = MonoNowNs();
  progress_.Observe(s.steps, s.n_running + s.n_waiting > 0, now);
  stalled_for_ms_.store(progress_.stalled_for_ns(now) / 1000000);
  const bool stalled = progress_.stalled();
  if (stalled_.exchange(stalled) != stalled && !draining_.load()) {
    PDS_LOG(WARNING) << "node " << id_
                     << (stalled ? ": engine stalled, NOT_SERVING"
                                 : ": engine progressing again, SERVING");
    rpc::SetServing(grpc_.server.get(), !stalled);
  }
}

void NodeServer::Shutdown(absl::Duration grace) {
  if (draining_.exchange(true)) return;
  // Start failed before the gRPC server was up (a bad flag, a KV transport
  // this device cannot use): nothing was served, nothing to drain.
  if (!grpc_.server) return;
  rpc::SetServing(grpc_.server.get(), false);
  {
    // Each router stops sending us work (links_ is only read here: the
    // heartbeat thread adds no link once draining).
    absl::MutexLock lock(&links_mu_);
    std::vector<std::thread> deregistering;
    for (auto& [address, link] : links_) {
      deregistering.emplace_back([l = link.get()] { l->Deregister(); });
    }
    for (std::thread& t : deregistering) t.join();
  }
  // Let requests in flight finish: the engine keeps running while gRPC
  // waits for its calls, up to the grace period.
  const absl::Time deadline = absl::Now() + grace;
  while (absl::Now() < deadline) {
    const EngineStats s = engine_->Stats();
    if (s.n_running + s.n_waiting + s.n_awaiting_kv + s.n_held == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  grpc_.server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  stop_.Notify();
  if (heartbeats_.joinable()) heartbeats_.join();
  {
    absl::MutexLock lock(&links_mu_);
    links_.clear();
  }
  if (http_) http_->Stop(absl::Seconds(1));
  engine_->Stop();
}

void NodeServer::Wait() { stop_.WaitForNotification(); }

NodeServer::~NodeServer() {
  Shutdown(absl::ZeroDuration());
  grpc_.server.reset();
  // Transport before the engine: no callback may reach a dead engine.
  sender_.reset();
  receiver_.reset();
}

}  // namespace pdserve::node
