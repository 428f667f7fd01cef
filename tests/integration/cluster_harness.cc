#include "tests/integration/cluster_harness.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "transport/tcp_socket.h"

namespace pdserve::itest {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    pid_t pid;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
    const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
    const size_t rp = stat.rfind(')');
    if (rp == std::string::npos || rp + 2 > stat.size()) continue;
    std::vector<std::string> fields = absl::StrSplit(stat.substr(rp + 2), ' ');
    pid_t ppid;
    if (fields.size() > 1 && absl::SimpleAtoi(fields[1], &ppid) && ppid == parent) {
      out.push_back(pid);
    }
  }
  return out;
}

namespace {

std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // Processes are polled while they start: reconnect soon after a refused
  // connection instead of after gRPC's default backoff (1 s and growing).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

}  // namespace

std::string PdserveBinary() { return std::string(PDSERVE_BINARY_DIR) + "/bin/pdserve"; }
std::string ModelPath() { return PDSERVE_MODEL_PATH; }
bool HaveModel() { return std::filesystem::exists(ModelPath()); }

// ---- ChildProcess ----

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    std::string name, const std::vector<std::string>& args, std::string log_path) {
  // Everything the child needs is prepared before fork: after it, only
  // async-signal-safe calls.
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open ", log_path, ": ", strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    // Dies with the test process, even on SIGKILL of the test.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, nullptr);
    signal(SIGPIPE, SIG_DFL);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  std::unique_ptr<ChildProcess> p(new ChildProcess());
  p->name_ = std::move(name);
  p->log_path_ = std::move(log_path);
  p->pid_ = pid;
  return p;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGCONT);  // a stopped child must not block the kill
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
    pid_ = -1;
  }
}

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  const pid_t r = waitpid(pid_, &status_, WNOHANG);
  if (r == pid_ || r < 0) {
    pid_ = -1;
    return false;
  }
  return true;
}

void ChildProcess::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

std::optional<int> ChildProcess::WaitExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (Running()) {
    if (absl::Now() > deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return status_;
}

int ChildProcess::Stop(absl::Duration grace) {
  if (!Running()) return status_;
  kill(pid_, SIGCONT);
  kill(pid_, SIGTERM);
  if (std::optional<int> st = WaitExit(grace)) return *st;
  kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  pid_ = -1;
  return status_;
}

std::string ChildProcess::LogTail(size_t max_bytes) const {
  std::string log = ReadFile(log_path_);
  if (log.size() > max_bytes) log = "..." + log.substr(log.size() - max_bytes);
  return log;
}

// ---- Cluster ----

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(const ClusterOptions& options) {
  std::unique_ptr<Cluster> c(new Cluster());
  char tmpl[] = "/tmp/pdserve-itest-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  c->dir_ = tmpl;
  // The router's port is picked free and can be taken by someone else
  // before the router binds it: retry with another.
  absl::Status s;
  for (int attempt = 0; attempt < 3; ++attempt) {
    s = c->StartProcesses(options, transport::internal::FreeLoopbackPort());
    if (s.ok()) return c;
    if (c->router_ && c->router_->Running()) break;  // not a port clash
  }
  return absl::Status(s.code(), absl::StrCat(s.message(), "\n", c->Logs()));
}

absl::Status Cluster::StartProcesses(const ClusterOptions& o, int port) {
  router_.reset();
  extra_routers_.clear();
  extra_ports_.clear();
  nodes_.clear();
  node_ids_.clear();
  port_ = port;
  const std::string bin = PdserveBinary();
  const std::string router_addr = router_address();
  std::string routers_flag = router_addr;  // every node registers with each router
  for (int i = 0; i < o.n_routers; ++i) {
    if (i > 0) {
      extra_ports_.push_back(transport::internal::FreeLoopbackPort());
      absl::StrAppend(&routers_flag, ",", router_address(i));
    }
    std::vector<std::string> rargs = {bin,        "router",          "--model",     ModelPath(),
                                      "--listen", router_address(i), "--log-level", "info"};
    rargs.insert(rargs.end(), o.router_flags.begin(), o.router_flags.end());
    const std::string name = i == 0 ? "router" : absl::StrCat("router-", i);
    auto router = ChildProcess::Start(name, rargs, absl::StrCat(dir_, "/", name, ".log"));
    if (!router.ok()) return router.status();
    if (i == 0) {
      router_ = std::move(*router);
    } else {
      extra_routers_.push_back(std::move(*router));
    }
  }

  auto start_node = [&](const std::string& role, int index,
                        const std::vector<std::string>& role_flags) -> absl::Status {
    const std::string id = absl::StrCat(role, "-", index);
    std::vector<std::string> args = {bin,         role,          "--model",          ModelPath(),
                                     "--listen",  "127.0.0.1:0", "--advertise-host", "127.0.0.1",
                                     "--router",  routers_flag,  "--node-id",        id,
                                     "--threads", "1",           "--log-level",      "info"};
    args.insert(args.end(), o.node_flags.begin(), o.node_flags.end());
    args.insert(args.end(), role_flags.begin(), role_flags.end());
    if (auto it = o.flags_by_node.find(id); it != o.flags_by_node.end()) {
      args.insert(args.end(), it->second.begin(), it->second.end());
    }
    auto p = ChildProcess::Start(id, args, absl::StrCat(dir_, "/", id, ".log"));
    if (!p.ok()) return p.status();
    nodes_.push_back(std::move(*p));
    node_ids_.push_back(id);
    return absl::OkStatus();
  };
  if (o.n_mixed > 0) {
    for (int i = 0; i < o.n_mixed; ++i) {
      if (absl::Status s = start_node("mixed", i, {}); !s.ok()) return s;
    }
  } else {
    for (int i = 0; i < o.n_prefill; ++i) {
      if (absl::Status s = start_node("prefill", i, o.prefill_flags); !s.ok()) return s;
    }
    for (int i = 0; i < o.n_decode; ++i) {
      if (absl::Status s = start_node("decode", i, o.decode_flags); !s.ok()) return s;
    }
  }

  router_channel_ = Channel(router_addr);
  generation_ = v1::Generation::NewStub(router_channel_);
  registry_ = v1::Registry::NewStub(router_channel_);
  extra_generation_.clear();
  extra_registry_.clear();
  for (int i = 1; i < o.n_routers; ++i) {
    auto channel = Channel(router_address(i));
    extra_generation_.push_back(v1::Generation::NewStub(channel));
    extra_registry_.push_back(v1::Registry::NewStub(channel));
  }

  // Ready: every node is registered with the router.
  const absl::Time deadline = absl::Now() + o.startup_timeout;
  for (;;) {
    if (!router_->Running()) return absl::UnavailableError("the router exited during startup");
    for (auto& r : extra_routers_) {
      if (!r->Running())
        return absl::UnavailableError(absl::StrCat(r->name(), " exited during startup"));
    }
    for (auto& n : nodes_) {
      if (!n->Running())
        return absl::UnavailableError(absl::StrCat(n->name(), " exited during startup"));
    }
    absl::StatusOr<v1::ListNodesResponse> list = ListNodes();
    bool everywhere = true;  // every router lists every node
    for (int i = 1; i < o.n_routers && everywhere; ++i) {
      absl::StatusOr<v1::ListNodesResponse> other = ListNodes(i);
      everywhere = other.ok() && other->nodes_size() == static_cast<int>(node_ids_.size());
    }
    if (everywhere && list.ok() && list->nodes_size() == static_cast<int>(node_ids_.size())) {
      node_addresses_.assign(node_ids_.size(), "");
      node_stubs_.clear();
      for (const auto& e : list->nodes()) {
        for (size_t i = 0; i < node_ids_.size(); ++i) {
          if (node_ids_[i] == e.info().node_id()) node_addresses_[i] = e.info().address();
        }
      }
      for (const std::string& a : node_addresses_)
        node_stubs_.push_back(v1::Node::NewStub(Channel(a)));
      return absl::OkStatus();
    }
    if (absl::Now() > deadline)
      return absl::DeadlineExceededError("nodes did not register in time");
    absl::SleepFor(absl::Milliseconds(50));
  }
}

Cluster::~Cluster() {
  if (::testing::UnitTest::GetInstance()->Failed()) {
    std::fprintf(stderr, "---- cluster logs (%s) ----\n%s\n", dir_.c_str(), Logs().c_str());
  }
  // SIGTERM to all at once (each drains on its own), then wait for each.
  for (auto& n : nodes_) n->Signal(SIGCONT), n->Signal(SIGTERM);
  if (router_) router_->Signal(SIGTERM);
  for (auto& r : extra_routers_) r->Signal(SIGCONT), r->Signal(SIGTERM);
  for (auto& n : nodes_) n->Stop(absl::Seconds(10));
  if (router_) router_->Stop(absl::Seconds(10));
  for (auto& r : extra_routers_) r->Stop(absl::Seconds(10));
  nodes_.clear();
  router_.reset();
  extra_routers_.clear();
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

std::string Cluster::router_address() const { return absl::StrCat("127.0.0.1:", port_); }

std::string Cluster::router_address(int i) const {
  return i == 0 ? router_address() : absl::StrCat("127.0.0.1:", extra_ports_.at(i - 1));
}

ChildProcess& Cluster::router_process(int i) {
  return i == 0 ? *router_ : *extra_routers_.at(i - 1);
}

v1::Generation::Stub& Cluster::generation(int i) {
  return i == 0 ? *generation_ : *extra_generation_.at(i - 1);
}

absl::StatusOr<v1::ListNodesResponse> Cluster::ListNodes(int i) {
  if (i == 0) return ListNodes();
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(absl::Seconds(2)));
  v1::ListNodesResponse resp;
  grpc::Status s = extra_registry_.at(i - 1)->ListNodes(&ctx, v1::ListNodesRequest(), &resp);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return resp;
}

ChildProcess& Cluster::node_process(const std::string& id) {
  for (size_t i = 0; i < node_ids_.size(); ++i) {
    if (node_ids_[i] == id) return *nodes_[i];
  }
  ADD_FAILURE() << "no node " << id;
  std::abort();
}

const std::string& Cluster::node_address(const std::string& id) const {
  for (size_t i = 0; i < node_ids_.size(); ++i) {
    if (node_ids_[i] == id) return node_addresses_[i];
  }
  ADD_FAILURE() << "no node " << id;
  std::abort();
}

v1::Node::Stub& Cluster::node(const std::string& id) {
  for (size_t i = 0; i < node_ids_.size(); ++i) {
    if (node_ids_[i] == id) return *node_stubs_[i];
  }
  ADD_FAILURE() << "no node " << id;
  std::abort();
}

absl::StatusOr<v1::ListNodesResponse> Cluster::ListNodes() {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(absl::Seconds(2)));
  v1::ListNodesResponse resp;
  grpc::Status s = registry_->ListNodes(&ctx, v1::ListNodesRequest(), &resp);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return resp;
}

absl::StatusOr<v1::NodeLoad> Cluster::GetLoad(const std::string& id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(absl::Seconds(2)));
  v1::NodeLoad load;
  grpc::Status s = node(id).GetLoad(&ctx, v1::GetLoadRequest(), &load);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return load;
}

bool Cluster::WaitForNodes(const std::function<bool(const v1::ListNodesResponse&)>& done,
                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<v1::ListNodesResponse> list = ListNodes();
    if (list.ok() && done(*list)) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

bool Cluster::WaitForIdleKv(const std::string& id, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<v1::NodeLoad> l = GetLoad(id);
    if (l.ok() && l->total_kv_blocks() > 0 && l->free_kv_blocks() == l->total_kv_blocks() &&
        l->running() + l->waiting() + l->awaiting_kv() == 0) {
      return true;
    }
    if (absl::Now() > deadline) {
      std::fprintf(stderr, "%s KV not idle: %s\n", id.c_str(),
                   l.ok() ? l->ShortDebugString().c_str() : l.status().ToString().c_str());
      return false;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::string Cluster::Logs() const {
  std::string out;
  if (router_) absl::StrAppend(&out, "== router ==\n", router_->LogTail(), "\n");
  for (const auto& r : extra_routers_) {
    absl::StrAppend(&out, "== ", r->name(), " ==\n", r->LogTail(), "\n");
  }
  for (const auto& n : nodes_) absl::StrAppend(&out, "== ", n->name(), " ==\n", n->LogTail(), "\n");
  return out;
}

// ---- requests ----

v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.set_text(prompt);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_stop()->set_max_tokens(max_tokens);
  return r;
}

StreamResult Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                      absl::Duration timeout,
                      const std::function<bool(const v1::GenerateResponse&)>& on_event,
                      grpc::ClientContext* ctx) {
  StreamResult r;
  grpc::ClientContext own_ctx;
  if (ctx == nullptr) {
    ctx = &own_ctx;
    ctx->set_deadline(DeadlineIn(timeout));
  }
  const int64_t t0 = MonoNowNs();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(ctx, request);
  v1::GenerateResponse resp;
  bool cancelled = false;
  while (reader->Read(&resp)) {
    if (resp.has_chunk()) {
      ++r.n_chunks;
      r.token_ids.insert(r.token_ids.end(), resp.chunk().token_ids().begin(),
                         resp.chunk().token_ids().end());
      r.text += resp.chunk().text();
      r.last_chunk_usage = resp.chunk().usage();
    } else if (resp.has_complete()) {
      r.complete = resp.complete();
    } else if (resp.has_error()) {
      r.error = resp.error();
    }
    if (on_event && !cancelled && !on_event(resp)) {
      cancelled = true;
      ctx->TryCancel();
    }
  }
  r.status = reader->Finish();
  r.client_e2e_ns = MonoNowNs() - t0;
  return r;
}

absl::StatusOr<ReferenceOutput> ReferenceGenerate(const std::string& prompt, int max_tokens) {
  char tmpl[] = "/tmp/pdserve-ref-XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd < 0) return absl::InternalError("mkstemp failed");
  close(fd);
  const std::string log = tmpl;
  std::optional<int> status;
  {
    auto p = ChildProcess::Start(
        "generate",
        {PdserveBinary(), "generate", "--model", ModelPath(), "--prompt", prompt, "--temperature",
         "0", "--max-tokens", std::to_string(max_tokens), "--threads", "1", "--print-token-ids"},
        log);
    if (!p.ok()) return p.status();
    status = (*p)->WaitExit(absl::Seconds(120));
  }
  const std::string out = ReadFile(log);
  unlink(log.c_str());
  if (!status || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat("pdserve generate failed:\n", out));
  }
  // The JSON line is the last line that starts with '{'.
  const size_t at = out.rfind("\n{");
  const std::string line = out.substr(at == std::string::npos ? 0 : at + 1);
  nlohmann::json j = nlohmann::json::parse(line.substr(0, line.find('\n')), nullptr, false);
  if (j.is_discarded() || !j.contains("token_ids")) {
    return absl::InternalError(absl::StrCat("no --print-token-ids line in:\n", out));
  }
  ReferenceOutput ref;
  ref.prompt_tokens = j["prompt_tokens"].get<int>();
  ref.token_ids = j["token_ids"].get<std::vector<int32_t>>();
  ref.finish_reason = j["finish_reason"].get<std::string>();
  return ref;
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req =
        absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) out.append(buf, n);
    }
  }
  ::close(fd);
  const size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

double Metric(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, name + " ")) continue;
    double v = -1;
    if (absl::SimpleAtod(line.substr(name.size() + 1), &v)) return v;
  }
  return -1;
}

}  // namespace pdserve::itest
