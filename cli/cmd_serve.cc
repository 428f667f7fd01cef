// pdserve serve: colocated serving in one process — one engine doing both
// phases with chunked prefill (a mixed node) behind the same client API as
// the cluster (an in-process router). The baseline disaggregation must beat.
#include "absl/strings/str_cat.h"
#include "cli/command.h"
#include "cli/node_flags.h"
#include "cli/signals.h"
#include "common/log.h"
#include "common/secure_random.h"

namespace pdserve::cli {
namespace {

int RunServe(int argc, char** argv) {
  BlockTerminationSignals();
  po::options_description desc("serve flags");
  AddCommonFlags(&desc);
  AddEngineFlags(&desc);
  desc.add_options()("listen", po::value<std::string>()->default_value("0.0.0.0:50051"),
                     "client API address")("metrics-port", po::value<int>()->default_value(-1),
                                           "router HTTP /metrics (-1: off)")(
      "node-metrics-port", po::value<int>()->default_value(-1), "engine HTTP /metrics (-1: off)")(
      "max-queue", po::value<int>()->default_value(256),
      "requests waiting, then RESOURCE_EXHAUSTED")(
      "trace-file", po::value<std::string>()->default_value(""), "OTLP/JSON span file")(
      "timing-log", po::value<std::string>()->default_value(""), "per-request stage timing lines")(
      "drain-timeout", po::value<int>()->default_value(30),
      "seconds to finish requests on SIGTERM")(
      "http-port", po::value<int>()->default_value(-1),
      "OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models; -1: off)")(
      "served-model-name", po::value<std::string>()->default_value(""),
      "model name of the HTTP API (default: the model file's name)")(
      "chat-default-max-tokens", po::value<int>()->default_value(512),
      "max_tokens of chat requests that do not set it");
  AddSecurityFlags(&desc);
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "[flags]", desc, &vm); rc >= 0) return rc;
  EngineFlags ef;
  if (absl::Status s = ReadEngineFlags(vm, &ef); !s.ok())
    return Fail("serve", std::string(s.message()));
  auto model = LoadModel(ef);
  if (!model.ok()) return Fail("serve", std::string(model.status().message()));

  router::RouterOptions ro;
  ro.model_path = ef.model_path;
  ro.listen = vm["listen"].as<std::string>();
  ro.metrics_port = vm["metrics-port"].as<int>();
  ro.config.max_queue = vm["max-queue"].as<int>();
  ro.trace_file = vm["trace-file"].as<std::string>();
  ro.timing_log = vm["timing-log"].as<std::string>();
  ro.heartbeat_interval_ms = 200;
  ro.http_port = vm["http-port"].as<int>();
  ro.served_model_name = vm["served-model-name"].as<std::string>();
  ro.chat_default_max_tokens = vm["chat-default-max-tokens"].as<int>();
  ro.security = ReadSecurityFlags(vm);
  if (!ro.security.ca_file.empty()) {
    return Fail("serve",
                "--tls-ca is for clusters (mutual TLS with nodes); serve has no remote nodes");
  }
  if (ef.load_format == "dummy") {
    return Fail(
        "serve",
        "--load-format dummy is for generate and bench (the router needs a vocabulary file)");
  }
  if (ro.security.node_token.empty() && ro.security.node_token_file.empty()) {
    // Only this process talks to its engine: a random token keeps clients
    // off the Registry and the engine's Node port.
    ro.security.node_token = SecureRandomHex(16);
  }
  auto router = router::RouterServer::Start(ro);
  if (!router.ok()) return Fail("serve", std::string(router.status().message()));

  node::NodeOptions no;
  no.role = node::NodeRole::kMixed;
  no.node_id = "engine";
  no.listen = "127.0.0.1:0";
  no.router = absl::StrCat("127.0.0.1:", (*router)->port());
  no.metrics_port = vm["node-metrics-port"].as<int>();
  no.engine = ef.options;
  no.kv_dtype_name = vm["kv-dtype"].as<std::string>();
  // The engine sits on loopback inside this process: no TLS, and the node
  // token the router was given (or the one made below), never a client key.
  no.security.node_token = ro.security.node_token;
  no.security.node_token_file = ro.security.node_token_file;
  auto node = node::NodeServer::Start(no, *model);
  if (!node.ok()) return Fail("serve", std::string(node.status().message()));
  PDS_LOG(INFO) << "serving on port " << (*router)->port();

  const int sig = WaitForTerminationSignal();
  PDS_LOG(INFO) << "serve: signal " << sig << ", draining";
  const absl::Duration grace = absl::Seconds(vm["drain-timeout"].as<int>());
  (*router)->Shutdown(grace);
  (*node)->Shutdown(absl::Seconds(1));
  return 0;
}

}  // namespace
PDS_COMMAND(serve, "colocated serving: one engine for both phases behind the client API", RunServe);
}  // namespace pdserve::cli
