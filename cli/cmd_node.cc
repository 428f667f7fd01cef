// pdserve prefill | decode | node: one node process of the cluster.
#include "cli/command.h"
#include "cli/node_flags.h"
#include "cli/signals.h"
#include "common/log.h"
#include "node/node_server.h"
#include "transport/kv_transport_factory.h"

namespace pdserve::cli {

void AddNodeFlags(po::options_description* desc) {
  desc->add_options()("listen", po::value<std::string>()->default_value("0.0.0.0:0"),
                      "Node service address")("advertise-host",
                                              po::value<std::string>()->default_value("127.0.0.1"),
                                              "host the router and peers use to reach this node")(
      "router", po::value<std::string>()->default_value(""),
      "router host:port to register with; several routers over one node pool: a,b")(
      "router-service", po::value<std::string>()->default_value(""),
      "host:port whose every address is a router to register with, re-resolved every "
      "--router-resolve-interval (a Kubernetes headless Service over router replicas)")(
      "router-resolve-interval", po::value<int>()->default_value(10),
      "seconds between resolutions of --router-service")(
      "test-stall-file", po::value<std::string>()->default_value(""),
      "fault injection for tests: while this file exists the engine takes no step (a stall "
      "with the process alive)")("node-id", po::value<std::string>()->default_value(""),
                                 "default: <role>-<port>")(
      "kv-port", po::value<int>()->default_value(0), "decode: KV receiver port (0: any)")(
      "kv-listen-host", po::value<std::string>()->default_value(""),
      "decode: address the KV receiver binds (default: --advertise-host, not every interface)")(
      "kv-advertise", po::value<std::string>()->default_value(""),
      "decode: host:port prefill nodes ship KV to, when a proxy or NAT sits in between "
      "(default: advertise-host:kv-port)")(
      "kv-transport", po::value<std::string>()->default_value("auto"),
      "KV path: tcp (host memory; with --device cuda staged through pinned buffers), ipc (CUDA "
      "IPC, prefill and decode on one host), nccl (GPU to GPU), or auto (CPU: tcp; GPU decode: "
      "ipc when advertised on loopback, else nccl; GPU prefill: whatever the decode node "
      "offers)")("kv-checksum", po::bool_switch(), "prefill: crc32 every KV payload")(
      "metrics-port", po::value<int>()->default_value(-1),
      "HTTP /metrics, /health, /ready (-1: off)")(
      "step-log-dir", po::value<std::string>()->default_value(""),
      "write a JSON line per engine step (shape and timings) to DIR/<node-id>.steps.jsonl, to "
      "compare a running node with its profile (bench/step_log_report.py)")(
      "drain-timeout", po::value<int>()->default_value(30),
      "seconds to finish requests on SIGTERM")("stall-timeout", po::value<int>()->default_value(60),
                                               "not ready (health NOT_SERVING, /ready 503) when "
                                               "queued work saw no engine step for this long")(
      "liveness-stall-timeout", po::value<int>()->default_value(300),
      "HTTP /health answers 503 (a liveness probe restarts the node) once queued work saw no "
      "engine step for this long; 0: off");
  AddSecurityFlags(desc);
}

absl::StatusOr<node::NodeOptions> ReadNodeFlags(const po::variables_map& vm, node::NodeRole role,
                                                EngineFlags* ef) {
  absl::Status s = ReadEngineFlags(vm, ef);
  if (!s.ok()) return s;
  node::NodeOptions o;
  o.role = role;
  o.listen = vm["listen"].as<std::string>();
  o.advertise_host = vm["advertise-host"].as<std::string>();
  o.router = vm["router"].as<std::string>();
  o.router_service = vm["router-service"].as<std::string>();
  o.router_resolve_ms = int64_t{vm["router-resolve-interval"].as<int>()} * 1000;
  if (o.router_resolve_ms < 1000)
    return absl::InvalidArgumentError("--router-resolve-interval must be >= 1 second");
  o.test_stall_file = vm["test-stall-file"].as<std::string>();
  o.node_id = vm["node-id"].as<std::string>();
  o.kv_port = vm["kv-port"].as<int>();
  o.kv_listen_host = vm["kv-listen-host"].as<std::string>();
  o.kv_advertise = vm["kv-advertise"].as<std::string>();
  o.kv_checksum = vm["kv-checksum"].as<bool>();
  o.kv_transport = vm["kv-transport"].as<std::string>();
  if (absl::Status k = transport::ParseKvTransportKind(o.kv_transport).status(); !k.ok()) return k;
  o.metrics_port = vm["metrics-port"].as<int>();
  o.step_log_dir = vm["step-log-dir"].as<std::string>();
  o.engine = ef->options;
  o.kv_dtype_name = vm["kv-dtype"].as<std::string>();
  o.stall_timeout_ms = int64_t{vm["stall-timeout"].as<int>()} * 1000;
  o.liveness_stall_timeout_ms = int64_t{vm["liveness-stall-timeout"].as<int>()} * 1000;
  if (o.liveness_stall_timeout_ms < 0)
    return absl::InvalidArgumentError("--liveness-stall-timeout must be >= 0");
  o.security = ReadSecurityFlags(vm);
  if (o.stall_timeout_ms <= 0)
    return absl::InvalidArgumentError("--stall-timeout must be positive");
  if (!o.kv_advertise.empty() && o.kv_advertise.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError("--kv-advertise must be host:port");
  }
  return o;
}

namespace {

int RunNode(int argc, char** argv, node::NodeRole role) {
  BlockTerminationSignals();
  const std::string name = node::RoleName(role);
  po::options_description desc(name + " node flags");
  AddCommonFlags(&desc);
  AddEngineFlags(&desc);
  AddNodeFlags(&desc);
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "[flags]", desc, &vm); rc >= 0) return rc;
  EngineFlags ef;
  auto options = ReadNodeFlags(vm, role, &ef);
  if (!options.ok()) return Fail(argv[0], std::string(options.status().message()));
  auto model = LoadModel(ef);
  if (!model.ok()) return Fail(argv[0], std::string(model.status().message()));
  auto server = node::NodeServer::Start(*options, *model);
  if (!server.ok()) return Fail(argv[0], std::string(server.status().message()));
  const int sig = WaitForTerminationSignal();
  PDS_LOG(INFO) << name << " node: signal " << sig << ", draining";
  (*server)->Shutdown(absl::Seconds(vm["drain-timeout"].as<int>()));
  return 0;
}

int RunPrefill(int argc, char** argv) { return RunNode(argc, argv, node::NodeRole::kPrefill); }
int RunDecode(int argc, char** argv) { return RunNode(argc, argv, node::NodeRole::kDecode); }
int RunMixed(int argc, char** argv) { return RunNode(argc, argv, node::NodeRole::kMixed); }

}  // namespace

PDS_COMMAND(prefill, "run a prefill node (computes prompts, ships KV to decode nodes)", RunPrefill);
PDS_COMMAND(decode, "run a decode node (receives KV, generates tokens)", RunDecode);
PDS_COMMAND(mixed, "run a mixed node (prefill and decode in one engine) for a router", RunMixed);
}  // namespace pdserve::cli
