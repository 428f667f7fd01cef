// The router process: the client API (Generation), the node Registry, the
// dispatch queue, metrics over HTTP, and the exporters. Loads only the
// tokenizer and chat template from the model file, never the weights.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "http/http_server.h"
#include "router/dispatcher.h"
#include "router/node_registry.h"
#include "router/openai_server.h"
#include "router/router_context.h"
#include "rpc/server_util.h"
#include "tracing/metrics.h"

namespace pdserve::router {

struct RouterOptions {
  std::string model_path;  // for the tokenizer and chat template
  std::string listen = "0.0.0.0:50051";
  int metrics_port = -1;                  // -1: no HTTP endpoint; 0: ephemeral
  std::vector<std::string> static_nodes;  // host:port of nodes that do not register
  int64_t heartbeat_interval_ms = 1000;   // told to registering nodes
  int64_t node_expiry_ms = 3000;          // dropped after this long without a heartbeat
  int64_t node_probation_ms = 2000;       // out of rotation after a transport failure
  RouterConfig config;
  std::string trace_file;  // OTLP/JSON spans, one request per line
  std::string timing_log;  // one JSON line of stage timings per request

  // OpenAI-compatible HTTP API (router/openai_server.h).
  int http_port = -1;  // -1: off; 0: ephemeral
  std::string http_bind = "0.0.0.0";
  int http_threads = 2;
  uint64_t http_max_body_bytes = 8 << 20;         // larger bodies get 413
  size_t http_max_stream_buffer_bytes = 1 << 20;  // unsent SSE bytes, then the request is cancelled
  int http_socket_send_buffer_bytes = 64 << 10;   // kernel buffer per connection (0: autotuned)
  int http_max_connections = 1024;                // more are answered 503 and closed
  int64_t http_header_timeout_ms = 10000;         // reading a request's headers (slow loris)
  int64_t http_read_timeout_ms = 30000;           // reading a whole request
  int64_t http_idle_timeout_ms = 60000;           // an open connection between requests
  std::string served_model_name;                  // the name clients use; default: the file's name
  int32_t chat_default_max_tokens = 512;
  // TLS for the client ports (gRPC and HTTP) and mutual TLS with nodes;
  // client API keys (one tenant each) guard every client route but health;
  // the node token guards the Registry and is what the router shows nodes.
  rpc::SecurityFiles security;
};

class RouterServer {
 public:
  static absl::StatusOr<std::unique_ptr<RouterServer>> Start(const RouterOptions& options);
  ~RouterServer();

  int port() const { return grpc_.port; }
  int metrics_port() const;
  int http_port() const;  // OpenAI API; -1 when off
  // Empty when the router can serve now, else why not (/ready).
  std::string NotReadyReason() const;
  NodeRegistry& registry() { return *registry_; }
  // Requests the router tracks (for Abort): in flight, queued or streaming.
  size_t tracked_calls();
  // Stops taking requests (health NOT_SERVING), waits up to `grace` for
  // requests in flight, then stops.
  void Shutdown(absl::Duration grace);
  void Wait();

 private:
  RouterServer() = default;
  void Housekeeping();
  // Tells every call that these nodes are gone (GenerateCall::NodeLost).
  void MoveCallsOff(const std::vector<std::pair<std::string, absl::Status>>& lost);

  RouterOptions options_;
  rpc::Security security_;   // loaded from options_.security
  std::string fingerprint_;  // of the model file: nodes must serve the same
  // Housekeeping thread only: the lease of each static node's registration.
  absl::flat_hash_map<std::string, std::string> static_leases_;
  std::unique_ptr<gguf::GgufFile> vocab_file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<NodeRegistry> registry_;
  tracing::MetricsRegistry metrics_registry_;
  RouterContext ctx_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<tracing::OtlpFileExporter> spans_;
  std::vector<std::unique_ptr<grpc::Service>> services_;
  rpc::ServerHandle grpc_;
  std::unique_ptr<http::HttpServer> http_;
  std::unique_ptr<OpenAiFrontend> openai_;
  std::unique_ptr<http::HttpServer> api_http_;
  absl::Notification stop_;
  std::thread housekeeping_;
};

}  // namespace pdserve::router
