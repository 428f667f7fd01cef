// pdserve router: the cluster's front door.
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/node_flags.h"
#include "cli/signals.h"
#include "common/log.h"
#include "router/router_server.h"

namespace pdserve::cli {
namespace {

void AddRouterFlags(po::options_description* desc) {
  desc->add_options()
      ("model,m", po::value<std::string>()->default_value(DefaultModelPath()),
       "GGUF file to read the tokenizer and chat template from (weights are not loaded)")
      ("listen", po::value<std::string>()->default_value("0.0.0.0:50051"), "client API address")
      ("metrics-port", po::value<int>()->default_value(-1), "HTTP /metrics, /health, /ready (-1: off)")
      ("nodes", po::value<std::string>()->default_value(""),
       "comma-separated host:port of nodes that do not register themselves")
      ("heartbeat-ms", po::value<int64_t>()->default_value(1000), "heartbeat interval told to nodes")
      ("node-expiry-ms", po::value<int64_t>()->default_value(3000),
       "drop a node after this long without a heartbeat")
      ("kv-deadline-ms", po::value<int64_t>()->default_value(30000), "budget for one KV transfer")
      ("max-queue", po::value<int>()->default_value(256), "requests waiting for a node, then 429")
      ("queue-timeout-ms", po::value<int64_t>()->default_value(60000),
       "longest a request waits for a node")
      ("trace-file", po::value<std::string>()->default_value(""), "OTLP/JSON span file")
      ("timing-log", po::value<std::string>()->default_value(""),
       "file for one JSON line of stage timings per request")
      ("drain-timeout", po::value<int>()->default_value(30), "seconds to finish requests on SIGTERM");
}

}  // namespace

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
  o.trace_file = vm["trace-file"].as<std::string>();
  o.timing_log = vm["timing-log"].as<std::string>();
  if (o.heartbeat_interval_ms <= 0 || o.node_expiry_ms <= 0 || o.config.kv_deadline_ms <= 0 ||
      o.config.max_queue < 0 || o.config.queue_timeout_ms <= 0) {
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
