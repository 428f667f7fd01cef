// A pdserve node process: one engine, the Node gRPC service for its role
// (prefill, decode or mixed), the KV transport for that role, registration
// and heartbeats to every router (node/router_link.h), and metrics/health
// over HTTP.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "decode_node/decode_handler.h"
#include "engine/engine.h"
#include "engine/step_log.h"
#include "http/http_server.h"
#include "node/events/engine_events.h"
#include "node/generate_handler.h"
#include "node/progress_monitor.h"
#include "node/router_link.h"
#include "prefill_node/prefill_handler.h"
#include "rpc/server_util.h"
#include "tracing/metrics.h"
#include "transport/kv_transport.h"
#include "transport/loopback_transport.h"

namespace pdserve::node {

struct NodeOptions {
  NodeRole role = NodeRole::kMixed;
  std::string node_id;                       // default: <role>-<port>
  std::string listen = "0.0.0.0:0";          // gRPC
  std::string advertise_host = "127.0.0.1";  // how the router and peers reach us
  std::string kv_listen_host;                // decode: the KV receiver; empty: advertise_host
  int kv_port = 0;
  // decode: the KV endpoint registered with the router, when peers must reach
  // the receiver through a proxy or NAT; empty: advertise_host:<bound kv port>.
  std::string kv_advertise;
  bool kv_checksum = false;
  // auto, tcp, nccl or ipc (transport/kv_transport_factory.h).
  std::string kv_transport = "auto";
  // Test seam (the in-process cluster): KV moves over this in-process
  // network instead of kv_transport; a decode node's receiver registers as
  // "loopback:<its address in memory>". Must outlive the node. Null: off.
  transport::LoopbackNetwork* kv_loopback = nullptr;
  // Routers to register with and heartbeat to: host:port, comma-separated;
  // empty: none (a static node list on the router).
  std::string router;
  // Also every address this host:port resolves to, re-resolved every
  // `router_resolve_ms` (a Kubernetes headless Service over the router
  // replicas); empty: none.
  std::string router_service;
  int64_t router_resolve_ms = 10000;
  // Test seam (fault injection, chaos tests): while this file exists the
  // engine takes no step, so queued work stalls with the process alive.
  // Checked every 100 ms; empty: never.
  std::string test_stall_file;
  int metrics_port = -1;  // -1: none; 0: ephemeral
  // A JSON line per engine step into <dir>/<node id>.steps.jsonl (StepLog);
  // empty: none.
  std::string step_log_dir;
  EngineOptions engine;
  std::string kv_dtype_name = "f16";
  // Not ready when queued work sees no engine step for this long.
  int64_t stall_timeout_ms = 60000;
  // Not live (HTTP /health 503, so a liveness probe restarts it) once stalled
  // this long; 0: /health follows the process only.
  int64_t liveness_stall_timeout_ms = 300000;
  // The node credential (node token, and mTLS with the router and peers:
  // the server requires client certificates when a CA is given). Without a
  // node token, a legacy shared API key is accepted in its place.
  rpc::SecurityFiles security;
};

class NodeServer {
 public:
  static absl::StatusOr<std::unique_ptr<NodeServer>> Start(const NodeOptions& options,
                                                           std::shared_ptr<const Model> model);
  ~NodeServer();

  const std::string& id() const { return id_; }
  std::string address() const;      // advertise_host:port
  std::string kv_endpoint() const;  // decode nodes; empty otherwise
  int port() const { return grpc_.port; }
  int metrics_port() const;
  Engine& engine() { return *engine_; }
  v1::NodeLoad Load() const;
  v1::NodeInfo Info() const;
  // Empty when the node can take work now, else why not (/ready).
  std::string NotReadyReason() const;
  // Why /health fails (ProgressMonitor::Dead), or empty.
  std::string NotLiveReason() const;

  // Graceful drain: NOT_SERVING, deregister, let requests in flight finish
  // for up to `grace`, then stop.
  void Shutdown(absl::Duration grace);
  void Wait();

 private:
  NodeServer() = default;
  // Feeds the counters, watches progress, keeps one RouterLink per router.
  void Heartbeats();
  void UpdateRouterLinks();
  // Samples the engine's progress; flips gRPC health when it stalls or recovers.
  void WatchProgress();

  NodeOptions options_;
  std::string id_;
  std::shared_ptr<const Model> model_;
  std::unique_ptr<StepLog> step_log_;  // outlives engine_'s steps: declared before it
  std::unique_ptr<Engine> engine_;
  tracing::MetricsRegistry metrics_registry_;
  tracing::PdserveMetrics metrics_;
  std::unique_ptr<transport::KvSender> sender_;
  std::unique_ptr<transport::KvReceiver> receiver_;
  std::unique_ptr<prefill::PrefillHandler> prefill_;
  std::unique_ptr<decode::DecodeHandler> decode_;
  std::unique_ptr<GenerateHandler> generate_;
  std::unique_ptr<grpc::Service> service_;
  rpc::ServerHandle grpc_;
  std::unique_ptr<http::HttpServer> http_;
  std::atomic<bool> draining_{false};
  rpc::Security security_;
  std::string fingerprint_;  // rpc::ModelFingerprint of the model file
  // Our registration with each router, by address (heartbeat thread;
  // Shutdown deregisters them).
  absl::Mutex links_mu_;
  std::map<std::string, std::unique_ptr<RouterLink>> links_ ABSL_GUARDED_BY(links_mu_);
  ProgressMonitor progress_;  // heartbeat thread only
  std::atomic<bool> stalled_{false};
  std::atomic<int64_t> stalled_for_ms_{0};
  absl::Notification stop_;
  std::thread heartbeats_;
  int64_t last_prefix_hits_ = 0, last_prefix_queries_ = 0, last_prompt_tokens_ = 0;
};

const char* RoleName(NodeRole role);

}  // namespace pdserve::node
