// pdserve cluster: a whole cluster on this machine — a router plus N prefill
// and M decode node processes (or K mixed nodes) on loopback. Waits until
// every node has registered, prints the addresses, and stops them all on
// SIGINT/SIGTERM (or when one of them dies).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/engine_flags.h"
#include "cli/node_flags.h"
#include "cli/signals.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/secure_random.h"
#include "pdserve/v1/node.grpc.pb.h"
#include "rpc/server_util.h"

extern char** environ;

namespace pdserve::cli {
namespace {

struct Child {
  std::string name;
  pid_t pid = -1;
  // Supervision (nodes of a role with several nodes): how to start it again.
  std::vector<std::string> args;
  std::string role;
  int64_t started_ns = 0;
  int restarts = 0;              // in a row: reset once it stays up kStableNs
  int64_t restart_at_ns = 0;     // > 0: dead, to be started again then
  int64_t secrets_until_ns = 0;  // > 0: its secret files exist until it registers or then
};

// A restarted child that stays up this long resets its backoff.
constexpr int64_t kStableNs = int64_t{60} * 1000000000;
// Backoff before restart n (0-based): 1 s, 2 s, 4 s, ... at most 30 s.
int64_t RestartBackoffNs(int n) {
  return std::min<int64_t>(int64_t{1000000000} << std::min(n, 5), int64_t{30} * 1000000000);
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return "unknown status";
}

// Secrets for the children, as files in a private directory (0700, files
// 0600) that the destructor removes (once the cluster is up, or on a failed
// start): never on a child's command line, which every local user can read
// in /proc/PID/cmdline.
class SecretDir {
 public:
  static absl::StatusOr<std::unique_ptr<SecretDir>> Create() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "pdserve-cluster-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError(
          absl::StrCat("cannot make a private directory for secrets: ", strerror(errno)));
    }
    return std::unique_ptr<SecretDir>(new SecretDir(std::move(pattern)));
  }
  ~SecretDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  // Writes `content` to <dir>/<name>, readable by this user only.
  absl::StatusOr<std::string> Write(const std::string& name, const std::string& content) {
    const std::string file = absl::StrCat(path_, "/", name);
    const int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
      return absl::InternalError(absl::StrCat("cannot write ", file, ": ", strerror(errno)));
    size_t done = 0;
    while (done < content.size()) {
      const ssize_t n = write(fd, content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close(fd);
        return absl::InternalError(absl::StrCat("cannot write ", file, ": ", strerror(errno)));
      }
      done += static_cast<size_t>(n);
    }
    close(fd);
    return file;
  }

 private:
  explicit SecretDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// This process's environment without the secrets' variables: the children
// get them from files.
std::vector<std::string> ChildEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view var(*e);
    if (absl::StartsWith(var, "PDSERVE_API_KEY=") || absl::StartsWith(var, "PDSERVE_NODE_TOKEN="))
      continue;
    env.emplace_back(*e);
  }
  return env;
}

absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  static const std::vector<std::string> env_strings = ChildEnvironment();
  std::vector<char*> envp;
  for (const std::string& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  // Children start with default signal dispositions and an empty mask, so
  // they handle SIGTERM themselves (drain) while this process relays it.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid;
  const int rc = posix_spawn(&pid, "/proc/self/exe", nullptr, &attr, argv.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  if (rc != 0)
    return absl::InternalError(absl::StrCat("cannot start ", args[1], ": ", strerror(rc)));
  return pid;
}

void StopAll(std::vector<Child>& children, int timeout_s) {
  for (const Child& c : children) {
    if (c.pid > 0) kill(c.pid, SIGTERM);
  }
  const int64_t deadline = MonoNowNs() + int64_t{timeout_s} * 1000000000;
  for (Child& c : children) {
    while (c.pid > 0) {
      int status;
      const pid_t r = waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid || r < 0) {
        c.pid = -1;
        break;
      }
      if (MonoNowNs() > deadline) {
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &status, 0);
        c.pid = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

// The first child that exited (its wait status in `status`), or nullptr.
Child* Reap(std::vector<Child>& children, int* status = nullptr) {
  for (Child& c : children) {
    if (c.pid <= 0) continue;
    int st;
    if (waitpid(c.pid, &st, WNOHANG) == c.pid) {
      c.pid = -1;
      if (status != nullptr) *status = st;
      return &c;
    }
  }
  return nullptr;
}

int RunCluster(int argc, char** argv) {
  BlockTerminationSignals();
  po::options_description desc("cluster flags");
  AddCommonFlags(&desc);
  desc.add_options()("model,m", po::value<std::string>()->default_value(DefaultModelPath()),
                     "GGUF model file")("prefill", po::value<int>()->default_value(1),
                                        "prefill nodes")(
      "decode", po::value<int>()->default_value(1), "decode nodes")(
      "mixed", po::value<int>()->default_value(0), "mixed (colocated) nodes instead of P/D pools")(
      "port", po::value<int>()->default_value(50051), "router port; nodes take the next ports")(
      "metrics-port", po::value<int>()->default_value(-1),
      "router metrics port; nodes take the next ones (-1: off)")(
      "threads", po::value<int>()->default_value(0), "compute threads per node (0: CPUs / nodes)")(
      "pin", po::bool_switch(), "pin each node's threads to its own CPUs")(
      "node-flags", po::value<std::string>()->default_value(""),
      "extra flags for every node, e.g. \"--kv-cache-mib 512 --max-batch-tokens 1024\"")(
      "router-flags", po::value<std::string>()->default_value(""), "extra flags for the router")(
      "kv-transport", po::value<std::string>()->default_value("auto"),
      "KV path between prefill and decode nodes: auto, tcp, nccl or ipc (see pdserve prefill "
      "--help)")("startup-timeout", po::value<int>()->default_value(120),
                 "seconds to wait for the nodes")("http-port", po::value<int>()->default_value(-1),
                                                  "router's OpenAI-compatible HTTP API (-1: off)");
  // The cluster's processes run with the same TLS/mTLS settings; client API
  // keys go to the router and a node token (given, or made here) to all,
  // both by file.
  AddSecurityFlags(&desc);
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "[flags]", desc, &vm); rc >= 0) return rc;
  const int n_prefill = vm["prefill"].as<int>();
  const int n_decode = vm["decode"].as<int>();
  const int n_mixed = vm["mixed"].as<int>();
  if (n_mixed < 0 || n_prefill < 0 || n_decode < 0 ||
      (n_mixed == 0 && (n_prefill < 1 || n_decode < 1))) {
    return Fail("cluster", "need --prefill >= 1 and --decode >= 1, or --mixed >= 1");
  }
  const int port = vm["port"].as<int>();
  const int metrics = vm["metrics-port"].as<int>();
  const std::string model = vm["model"].as<std::string>();
  const std::string log_level = vm["log-level"].as<std::string>();
  const int n_nodes = n_mixed > 0 ? n_mixed : n_prefill + n_decode;
  const int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int threads = vm["threads"].as<int>();
  if (threads <= 0) threads = std::max(1, cpus / n_nodes);
  const std::string node_flags = vm["node-flags"].as<std::string>();
  const std::string router_flags = vm["router-flags"].as<std::string>();
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    for (absl::string_view p : absl::StrSplit(s, ' ', absl::SkipEmpty())) out.emplace_back(p);
    return out;
  };

  std::vector<Child> children;
  std::vector<std::string> router_args = {
      "pdserve",     "router", "--model", model, "--listen", absl::StrCat("127.0.0.1:", port),
      "--log-level", log_level};
  if (metrics >= 0) {
    router_args.push_back("--metrics-port");
    router_args.push_back(std::to_string(metrics));
  }
  if (vm["http-port"].as<int>() >= 0) {
    router_args.push_back("--http-port");
    router_args.push_back(std::to_string(vm["http-port"].as<int>()));
  }
  // Paths of TLS files are no secret; keys and tokens travel by file.
  std::vector<std::string> security_args;
  for (const char* flag : {"tls-cert", "tls-key", "tls-ca", "tls-server-name"}) {
    const std::string& value = vm[flag].as<std::string>();
    if (value.empty()) continue;
    security_args.push_back(absl::StrCat("--", flag));
    security_args.push_back(value);
  }
  rpc::SecurityFiles security_files = ReadSecurityFlags(vm);
  absl::StatusOr<rpc::Security> security = rpc::Security::Load(security_files);
  if (!security.ok()) return Fail("cluster", std::string(security.status().message()));
  // Every process of this cluster shares one node token: the given one, or a
  // random one (then nothing but this cluster's processes can call the
  // Registry or a node).
  if (security->node_token.empty()) security->node_token = SecureRandomHex(16);
  absl::StatusOr<std::unique_ptr<SecretDir>> secrets = SecretDir::Create();
  if (!secrets.ok()) return Fail("cluster", std::string(secrets.status().message()));
  absl::StatusOr<std::string> token_file =
      (*secrets)->Write("node-token", security->node_token + "\n");
  if (!token_file.ok()) return Fail("cluster", std::string(token_file.status().message()));
  security_args.push_back("--node-token-file");
  security_args.push_back(*token_file);
  if (!security->api_keys.empty()) {
    absl::StatusOr<std::string> keys_file =
        (*secrets)->Write("api-keys", absl::StrJoin(security->api_keys, "\n") + "\n");
    if (!keys_file.ok()) return Fail("cluster", std::string(keys_file.status().message()));
    router_args.push_back("--api-key-file");
    router_args.push_back(*keys_file);
  }
  for (const std::string& f : security_args) router_args.push_back(f);
  for (const std::string& f : split(router_flags)) router_args.push_back(f);
  auto rpid = Spawn(router_args);
  if (!rpid.ok()) return Fail("cluster", std::string(rpid.status().message()));
  children.push_back({"router", *rpid});

  int next_cpu = 0;
  auto start_node = [&](const std::string& role, int index) -> absl::Status {
    const int node_port = port + 1 + static_cast<int>(children.size()) - 1;
    std::vector<std::string> args = {"pdserve",          role,
                                     "--model",          model,
                                     "--listen",         absl::StrCat("127.0.0.1:", node_port),
                                     "--advertise-host", "127.0.0.1",
                                     "--router",         absl::StrCat("127.0.0.1:", port),
                                     "--node-id",        absl::StrCat(role, "-", index),
                                     "--threads",        std::to_string(threads),
                                     "--log-level",      log_level};
    if (role != "mixed") {
      args.push_back("--kv-transport");
      args.push_back(vm["kv-transport"].as<std::string>());
    }
    if (role == "decode") {
      args.push_back("--kv-port");
      args.push_back(std::to_string(port + 100 + index));
    }
    if (metrics >= 0) {
      args.push_back("--metrics-port");
      args.push_back(std::to_string(metrics + static_cast<int>(children.size())));
    }
    if (vm["pin"].as<bool>()) {
      std::string pins;
      for (int t = 0; t < threads; ++t) absl::StrAppend(&pins, t ? "," : "", (next_cpu++) % cpus);
      args.push_back("--pin-cpus");
      args.push_back(pins);
    }
    for (const std::string& f : security_args) args.push_back(f);
    for (const std::string& f : split(node_flags)) args.push_back(f);
    auto pid = Spawn(args);
    if (!pid.ok()) return pid.status();
    Child child;
    child.name = absl::StrCat(role, "-", index);
    child.pid = *pid;
    child.args = std::move(args);
    child.role = role;
    child.started_ns = MonoNowNs();
    children.push_back(std::move(child));
    return absl::OkStatus();
  };
  absl::Status started = absl::OkStatus();
  if (n_mixed > 0) {
    for (int i = 0; i < n_mixed && started.ok(); ++i) started = start_node("mixed", i);
  } else {
    for (int i = 0; i < n_prefill && started.ok(); ++i) started = start_node("prefill", i);
    for (int i = 0; i < n_decode && started.ok(); ++i) started = start_node("decode", i);
  }
  if (!started.ok()) {
    StopAll(children, 5);
    return Fail("cluster", std::string(started.message()));
  }

  // Healthy: every node registered with the router.
  auto new_registry = [&] {
    return v1::Registry::NewStub(
        rpc::MakeChannel(absl::StrCat("127.0.0.1:", port), security->ForPeers()));
  };
  auto registry = new_registry();
  const int64_t deadline = MonoNowNs() + int64_t{vm["startup-timeout"].as<int>()} * 1000000000;
  v1::ListNodesResponse nodes;
  for (;;) {
    if (const Child* dead = Reap(children)) {
      StopAll(children, 5);
      return Fail("cluster",
                  absl::StrCat(dead->name, " exited during startup (see its log above)"));
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    nodes.Clear();
    const grpc::Status listed = registry->ListNodes(&ctx, v1::ListNodesRequest(), &nodes);
    if (listed.ok() && nodes.nodes_size() == n_nodes) break;
    // A channel whose first dial was refused (the router still starting)
    // waits out gRPC's reconnect backoff (1 s, growing) before it tries
    // again; a fresh channel dials at once.
    if (!listed.ok()) registry = new_registry();
    if (MonoNowNs() > deadline) {
      StopAll(children, 5);
      return Fail("cluster", "nodes did not all register in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::cout << "cluster ready: router at 127.0.0.1:" << port;
  if (metrics >= 0) std::cout << " (metrics http://127.0.0.1:" << metrics << "/metrics)";
  std::cout << "\n";
  for (const auto& e : nodes.nodes()) {
    std::cout << "  " << e.info().node_id() << " " << v1::NodeRole_Name(e.info().role()) << " at "
              << e.info().address()
              << (e.info().kv_endpoint().empty() ? "" : " kv " + e.info().kv_endpoint()) << "\n";
  }
  std::cout << std::flush;
  // Every child has read its secrets (they read them once, at startup):
  // remove them now, so not even a SIGKILL of this process leaves them behind.
  secrets->reset();

  // Run until a signal arrives or a child that cannot be replaced dies. A
  // node of a role with several nodes is restarted with backoff (the others
  // keep serving meanwhile: the router retries their requests elsewhere);
  // the router, or the only node of its role, stops the cluster.
  absl::flat_hash_map<std::string, int> per_role;
  for (const Child& c : children) {
    if (!c.role.empty()) ++per_role[c.role];
  }
  // Secret files of restarted children, removed once they registered.
  absl::flat_hash_map<std::string, std::unique_ptr<SecretDir>> restart_secrets;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int rc = 0;
  for (;;) {
    timespec poll = {0, 200 * 1000 * 1000};
    const int sig = sigtimedwait(&set, nullptr, &poll);
    if (sig == SIGINT || sig == SIGTERM) break;
    int status = 0;
    if (Child* dead = Reap(children, &status)) {
      if (dead->role.empty() || per_role[dead->role] < 2) {
        PDS_LOG(ERROR) << "cluster: " << dead->name << " exited (" << DescribeExit(status)
                       << "); stopping the cluster";
        rc = 1;
        break;
      }
      const int64_t now = MonoNowNs();
      if (now - dead->started_ns >= kStableNs) dead->restarts = 0;
      const int64_t backoff = RestartBackoffNs(dead->restarts);
      dead->restart_at_ns = now + backoff;
      restart_secrets.erase(dead->name);
      dead->secrets_until_ns = 0;
      PDS_LOG(WARNING) << "cluster: " << dead->name << " exited (" << DescribeExit(status)
                       << "); restarting it in " << backoff / 1000000 << " ms (restart "
                       << dead->restarts + 1 << "); the other " << dead->role
                       << " nodes keep serving";
    }
    const int64_t now = MonoNowNs();
    bool start_failed = false;
    for (Child& c : children) {
      if (c.restart_at_ns == 0 || now < c.restart_at_ns) continue;
      c.restart_at_ns = 0;
      ++c.restarts;
      // Its secrets were removed after the first start: write them again,
      // for this start only.
      absl::StatusOr<std::unique_ptr<SecretDir>> dir = SecretDir::Create();
      absl::StatusOr<std::string> token =
          dir.ok() ? (*dir)->Write("node-token", security->node_token + "\n")
                   : absl::StatusOr<std::string>(dir.status());
      if (!token.ok()) {
        PDS_LOG(ERROR) << "cluster: cannot restart " << c.name << ": " << token.status();
        start_failed = true;
        break;
      }
      for (size_t i = 0; i + 1 < c.args.size(); ++i) {
        if (c.args[i] == "--node-token-file") c.args[i + 1] = *token;
      }
      absl::StatusOr<pid_t> pid = Spawn(c.args);
      if (!pid.ok()) {
        PDS_LOG(ERROR) << "cluster: cannot restart " << c.name << ": " << pid.status();
        start_failed = true;
        break;
      }
      c.pid = *pid;
      c.started_ns = now;
      c.secrets_until_ns = now + int64_t{vm["startup-timeout"].as<int>()} * 1000000000;
      restart_secrets[c.name] = std::move(*dir);
      PDS_LOG(WARNING) << "cluster: restarted " << c.name << " (pid " << c.pid << ")";
    }
    if (start_failed) {
      rc = 1;
      break;
    }
    if (!restart_secrets.empty()) {
      // Remove a restarted child's secrets once it registered (it read them).
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
      v1::ListNodesResponse listed;
      const bool ok = registry->ListNodes(&ctx, v1::ListNodesRequest(), &listed).ok();
      for (Child& c : children) {
        if (c.secrets_until_ns == 0) continue;
        bool registered = false;
        for (const auto& e : listed.nodes()) registered |= ok && e.info().node_id() == c.name;
        if (registered || now > c.secrets_until_ns || c.pid <= 0) {
          restart_secrets.erase(c.name);
          c.secrets_until_ns = 0;
          if (registered) PDS_LOG(INFO) << "cluster: " << c.name << " is back";
        }
      }
    }
  }
  StopAll(children, 30);
  return rc;
}

}  // namespace
PDS_COMMAND(cluster, "run a router plus prefill and decode nodes on this machine", RunCluster);
}  // namespace pdserve::cli
