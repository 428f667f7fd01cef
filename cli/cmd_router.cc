// pdserve router: the cluster's front door.
#include <cstdlib>

#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/node_flags.h"
#include "cli/signals.h"
#include "common/log.h"
#include "router/router_server.h"

namespace pdserve::cli {
namespace {

void AddRouterFlags(po::options_description* desc) {
  desc->add_options()(
      "model,m", po::value<std::string>()->default_value(DefaultModelPath()),
      "GGUF file to read the tokenizer and chat template from (weights are not loaded)")(
      "listen", po::value<std::string>()->default_value("0.0.0.0:50051"), "client API address")(
      "metrics-port", po::value<int>()->default_value(-1),
      "HTTP /metrics, /health, /ready (-1: off)")(
      "nodes", po::value<std::string>()->default_value(""),
      "comma-separated host:port of nodes that do not register themselves")(
      "heartbeat-ms", po::value<int64_t>()->default_value(1000),
      "heartbeat interval told to nodes")("node-expiry-ms",
                                          po::value<int64_t>()->default_value(3000),
                                          "drop a node after this long without a heartbeat")(
      "kv-deadline-ms", po::value<int64_t>()->default_value(30000), "budget for one KV transfer")(
      "max-queue", po::value<int>()->default_value(256), "requests waiting for a node, then 429")(
      "queue-timeout-ms", po::value<int64_t>()->default_value(60000),
      "longest a request waits for a node")(
      "max-retries", po::value<int>()->default_value(2),
      "retries on another pair when a node fails before token #1 reached the client; also the "
      "most migrations of one stream to another pair after its node failed mid-stream")(
      "migrate-after-stall-ms", po::value<int64_t>()->default_value(3000),
      "move a node's streams to another pair once its heartbeats report its engine stalled "
      "this long")(
      "max-stream-events", po::value<uint64_t>()->default_value(4096),
      "events buffered per gRPC client stream; a client that stops reading past this is cut off "
      "(RESOURCE_EXHAUSTED) and its request aborted on the nodes")(
      "node-probation-ms", po::value<int64_t>()->default_value(2000),
      "a node whose call failed at the transport is out of rotation this long (then until it "
      "heartbeats)")("prefill-ms-per-1k-tokens", po::value<int64_t>()->default_value(60000),
                     "Prefill call deadline: --kv-deadline-ms plus this per 1,000 prompt tokens")(
      "decode-ms-per-token", po::value<int64_t>()->default_value(1000),
      "Admit/Generate call deadline: the Prefill deadline plus this per max_tokens")(
      "trace-file", po::value<std::string>()->default_value(""), "OTLP/JSON span file")(
      "timing-log", po::value<std::string>()->default_value(""),
      "file for one JSON line of stage timings per request")(
      "drain-timeout", po::value<int>()->default_value(30),
      "seconds to finish requests on SIGTERM")(
      "http-port", po::value<int>()->default_value(-1),
      "OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models; -1: off)")(
      "http-bind", po::value<std::string>()->default_value("0.0.0.0"), "address of the HTTP API")(
      "http-threads", po::value<int>()->default_value(2), "HTTP API threads")(
      "http-max-body-bytes", po::value<uint64_t>()->default_value(8 << 20),
      "largest HTTP request body, then 413")(
      "http-stream-buffer-bytes", po::value<uint64_t>()->default_value(1 << 20),
      "unsent bytes per SSE stream; a client that stops reading past this is cancelled")(
      "http-socket-send-buffer-bytes", po::value<int>()->default_value(64 << 10),
      "kernel send buffer per HTTP connection (0: autotuned; bounds what a stalled reader pins)")(
      "http-max-connections", po::value<int>()->default_value(1024),
      "open HTTP connections at most; more are answered 503 and closed")(
      "http-header-timeout-ms", po::value<int64_t>()->default_value(10000),
      "longest a client may take to send a request's headers (slow-loris guard)")(
      "http-read-timeout-ms", po::value<int64_t>()->default_value(30000),
      "longest a client may take to send a whole request")(
      "http-idle-timeout-ms", po::value<int64_t>()->default_value(60000),
      "an idle keep-alive connection is closed after this long")(
      "served-model-name", po::value<std::string>()->default_value(""),
      "model name of the HTTP API (default: the model file's name)")(
      "chat-default-max-tokens", po::value<int>()->default_value(512),
      "max_tokens of chat requests that do not set it");
  AddSecurityFlags(desc);
}

}  // namespace

void AddSecurityFlags(po::options_description* desc) {
  desc->add_options()(
      "tls-cert", po::value<std::string>()->default_value(""),
      "PEM certificate chain: TLS on the client ports, and this process's identity for mutual TLS")(
      "tls-key", po::value<std::string>()->default_value(""), "PEM private key of --tls-cert")(
      "tls-ca", po::value<std::string>()->default_value(""),
      "PEM CA bundle: mutual TLS between router and nodes (peers must show a certificate it "
      "signed)")("tls-server-name", po::value<std::string>()->default_value(""),
                 "name peers' certificates must carry (default: the host dialled)")(
      "api-key", po::value<std::string>()->default_value(""),
      "a client API key required on every client route but health (HTTP Bearer, gRPC "
      "authorization metadata); visible in `ps`: prefer --api-key-file or PDSERVE_API_KEY")(
      "api-key-file", po::value<std::string>()->default_value(""),
      "client API keys, one per line ('#' comments); each key is its own tenant")(
      "node-token-file", po::value<std::string>()->default_value(""),
      "the node credential (or env PDSERVE_NODE_TOKEN): the router and the nodes show it to "
      "each other's Registry and Node services, which refuse client API keys");
}

rpc::SecurityFiles ReadSecurityFlags(const po::variables_map& vm) {
  rpc::SecurityFiles f;
  f.cert_file = vm["tls-cert"].as<std::string>();
  f.key_file = vm["tls-key"].as<std::string>();
  f.ca_file = vm["tls-ca"].as<std::string>();
  f.server_name = vm["tls-server-name"].as<std::string>();
  f.api_key = vm["api-key"].as<std::string>();
  f.api_key_file = vm["api-key-file"].as<std::string>();
  f.node_token_file = vm["node-token-file"].as<std::string>();
  // Secrets may come from the environment instead of argv.
  if (f.api_key.empty()) {
    if (const char* key = std::getenv("PDSERVE_API_KEY")) f.api_key = key;
  }
  if (const char* token = std::getenv("PDSERVE_NODE_TOKEN")) f.node_token = token;
  return f;
}

absl::StatusOr<router::RouterOptions> ReadRouterFlags(const po::variables_map& vm) {
  router::RouterOptions o;
  o.model_path = vm["model"].as<std::string>();
  o.listen = vm["listen"].as<std::string>();
  o.metrics_port = vm["metrics-port"].as<int>();
  const std::string nodes = vm["nodes"].as<std::string>();
  if (!nodes.empty()) {
    for (absl::string_view n : absl::StrSplit(nodes, ',', absl::SkipEmpty())) {
      o.static_nodes.emplace_back(n);
    }
  }
  o.heartbeat_interval_ms = vm["heartbeat-ms"].as<int64_t>();
  o.node_expiry_ms = vm["node-expiry-ms"].as<int64_t>();
  o.config.kv_deadline_ms = vm["kv-deadline-ms"].as<int64_t>();
  o.config.max_queue = vm["max-queue"].as<int>();
  o.config.queue_timeout_ms = vm["queue-timeout-ms"].as<int64_t>();
  o.config.max_retries = vm["max-retries"].as<int>();
  o.config.migrate_after_stall_ms = vm["migrate-after-stall-ms"].as<int64_t>();
  o.config.max_stream_events = vm["max-stream-events"].as<uint64_t>();
  o.node_probation_ms = vm["node-probation-ms"].as<int64_t>();
  o.config.prefill_ms_per_1k_tokens = vm["prefill-ms-per-1k-tokens"].as<int64_t>();
  o.config.decode_ms_per_token = vm["decode-ms-per-token"].as<int64_t>();
  o.trace_file = vm["trace-file"].as<std::string>();
  o.timing_log = vm["timing-log"].as<std::string>();
  o.http_port = vm["http-port"].as<int>();
  o.http_bind = vm["http-bind"].as<std::string>();
  o.http_threads = vm["http-threads"].as<int>();
  o.http_max_body_bytes = vm["http-max-body-bytes"].as<uint64_t>();
  o.http_max_stream_buffer_bytes = vm["http-stream-buffer-bytes"].as<uint64_t>();
  o.http_socket_send_buffer_bytes = vm["http-socket-send-buffer-bytes"].as<int>();
  o.http_max_connections = vm["http-max-connections"].as<int>();
  o.http_header_timeout_ms = vm["http-header-timeout-ms"].as<int64_t>();
  o.http_read_timeout_ms = vm["http-read-timeout-ms"].as<int64_t>();
  o.http_idle_timeout_ms = vm["http-idle-timeout-ms"].as<int64_t>();
  o.served_model_name = vm["served-model-name"].as<std::string>();
  o.chat_default_max_tokens = vm["chat-default-max-tokens"].as<int>();
  o.security = ReadSecurityFlags(vm);
  if (o.http_threads < 1 || o.chat_default_max_tokens < 1 || o.http_max_body_bytes < 1 ||
      o.http_max_stream_buffer_bytes < 1 || o.http_max_connections < 1 ||
      o.http_header_timeout_ms < 1 || o.http_read_timeout_ms < 1 || o.http_idle_timeout_ms < 1) {
    return absl::InvalidArgumentError("HTTP limits must be positive");
  }
  if (o.heartbeat_interval_ms <= 0 || o.node_expiry_ms <= 0 || o.config.kv_deadline_ms <= 0 ||
      o.config.max_queue < 0 || o.config.queue_timeout_ms <= 0 || o.config.max_retries < 0 ||
      o.node_probation_ms < 0 || o.config.prefill_ms_per_1k_tokens <= 0 ||
      o.config.decode_ms_per_token <= 0 || o.config.migrate_after_stall_ms <= 0 ||
      o.config.max_stream_events < 1) {
    return absl::InvalidArgumentError("intervals and limits must be positive");
  }
  return o;
}

void AddRouterFlagsTo(po::options_description* desc) { AddRouterFlags(desc); }

namespace {
int RunRouter(int argc, char** argv) {
  BlockTerminationSignals();
  po::options_description desc("router flags");
  AddCommonFlags(&desc);
  AddRouterFlags(&desc);
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "[flags]", desc, &vm); rc >= 0) return rc;
  auto options = ReadRouterFlags(vm);
  if (!options.ok()) return Fail("router", std::string(options.status().message()));
  auto server = router::RouterServer::Start(*options);
  if (!server.ok()) return Fail("router", std::string(server.status().message()));
  const int sig = WaitForTerminationSignal();
  PDS_LOG(INFO) << "router: signal " << sig << ", draining";
  (*server)->Shutdown(absl::Seconds(vm["drain-timeout"].as<int>()));
  return 0;
}
}  // namespace

PDS_COMMAND(router, "run the router (client API, node registry, dispatch)", RunRouter);
}  // namespace pdserve::cli
