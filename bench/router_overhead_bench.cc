// Router overhead against a null engine. Two fake nodes run in this process
// and implement the Node service with no model: Prefill answers token #1 at
// once, Admit streams the remaining N-1 tokens at once. The real router runs
// as its own `pdserve router` process (so its CPU time can be read from
// /proc) and finds the fake nodes through --nodes.
//
// Prints:
//   - latency: p50/p99 of a request's end-to-end time through the router,
//     one request at a time, next to the same N tokens streamed straight
//     from the fake decode node (no router); the difference is the latency
//     the router adds;
//   - throughput: streamed requests/s with many concurrent clients, and
//     requests per second of router CPU time (requests/s per core).
//
//   build/bin/router_overhead_bench [--tokens 16] [--requests 2000]
//                                   [--concurrency 32] [--seconds 5]
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "engine/gguf/gguf.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "pdserve/v1/node.grpc.pb.h"
#include "rpc/model_fingerprint.h"
#include "transport/tcp_socket.h"

extern char** environ;

namespace pdserve {
namespace {

struct Flags {
  int tokens = 16;
  int requests = 2000;
  int concurrency = 32;
  double seconds = 5;
};

// ---- the null engine ----

class WriteAll : public grpc::ServerWriteReactor<v1::DecodeEvent> {
 public:
  explicit WriteAll(std::vector<v1::DecodeEvent> events) : events_(std::move(events)) { Next(); }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::CANCELLED);
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (next_ == events_.size()) {
      Finish(grpc::Status::OK);
      return;
    }
    StartWrite(&events_[next_++]);
  }
  std::vector<v1::DecodeEvent> events_;
  size_t next_ = 0;
};

class FakeNode final : public v1::Node::CallbackService {
 public:
  FakeNode(v1::NodeRole role, int tokens) : role_(role), tokens_(tokens) {}
  void set_info(v1::NodeInfo info) { info_ = std::move(info); }

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* ctx, const v1::PrefillRequest*,
                                    v1::PrefillResponse* resp) override {
    resp->set_token_id(42);
    resp->set_text(" a");
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerWriteReactor<v1::DecodeEvent>* Admit(grpc::CallbackServerContext*,
                                                   const v1::AdmitRequest* req) override {
    return new WriteAll(Events(req->request(), /*first=*/2));
  }

  grpc::ServerWriteReactor<v1::DecodeEvent>* Generate(grpc::CallbackServerContext*,
                                                      const v1::NodeRequest* req) override {
    return new WriteAll(Events(*req, /*first=*/1));
  }

  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* ctx, const v1::NodeAbortRequest*,
                                  v1::NodeAbortResponse*) override {
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* ctx, const v1::GetLoadRequest*,
                                    v1::NodeLoad* load) override {
    load->set_free_kv_blocks(1 << 24);
    load->set_total_kv_blocks(1 << 24);
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* ctx, const v1::GetLoadRequest*,
                                    v1::NodeInfo* info) override {
    *info = info_;
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

 private:
  // Tokens `first`..N as one chunk each, then complete.
  std::vector<v1::DecodeEvent> Events(const v1::NodeRequest& req, int first) const {
    const int n = std::min<int>(tokens_, req.stop().max_tokens());
    std::vector<v1::DecodeEvent> ev;
    ev.emplace_back().mutable_admitted()->set_blocks(1);
    for (int i = first; i <= n; ++i) {
      v1::Chunk* c = ev.emplace_back().mutable_chunk();
      c->add_token_ids(42);
      c->set_text(" a");
      c->mutable_usage()->set_completion_tokens(i);
    }
    v1::Complete* done = ev.emplace_back().mutable_complete();
    done->set_finish_reason(v1::FINISH_REASON_LENGTH);
    done->mutable_usage()->set_completion_tokens(n);
    return ev;
  }
  v1::NodeRole role_;
  int tokens_;
  v1::NodeInfo info_;
};

struct FakeServer {
  std::unique_ptr<FakeNode> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

std::string VocabFile();

FakeServer StartFake(v1::NodeRole role, const std::string& id, int tokens) {
  FakeServer f;
  f.service = std::make_unique<FakeNode>(role, tokens);
  grpc::ServerBuilder b;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &f.port);
  b.RegisterService(f.service.get());
  f.server = b.BuildAndStart();
  v1::NodeInfo info;
  info.set_node_id(id);
  info.set_role(role);
  info.set_address(absl::StrCat("127.0.0.1:", f.port));
  if (role == v1::NODE_ROLE_DECODE) info.set_kv_endpoint("127.0.0.1:1");  // never dialled
  // The router refuses nodes of another model than its own file.
  info.set_model_fingerprint(rpc::ModelFingerprint(**gguf::GgufFile::Open(VocabFile())));
  info.set_block_size(16);
  info.set_context_length(4096);
  f.service->set_info(info);
  return f;
}

// ---- helpers ----

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

// utime + stime of a process, in seconds.
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t rp = stat.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream ss(stat.substr(rp + 2));
  std::string field;
  double ticks = 0;
  // Fields after the name: state(3) ... utime(14) stime(15).
  for (int i = 3; i <= 15 && ss >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string VocabFile() {
  const std::string model =
      std::string(PDSERVE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (std::filesystem::exists(model)) return model;
  return std::string(PDSERVE_SOURCE_DIR) + "/tests/data/tokenizer/ggml-vocab-llama-spm.gguf";
}

v1::GenerateRequest Request(int tokens) {
  v1::GenerateRequest r;
  r.set_text("The capital of France is");
  r.mutable_sampling()->set_temperature(0);
  r.mutable_stop()->set_max_tokens(tokens);
  return r;
}

// One request through the router; its end-to-end time in ms, or -1.
double RouterRequest(v1::Generation::Stub& stub, const v1::GenerateRequest& req) {
  grpc::ClientContext ctx;
  const int64_t t0 = MonoNowNs();
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse resp;
  bool complete = false;
  while (reader->Read(&resp)) complete |= resp.has_complete();
  const bool ok = reader->Finish().ok() && complete;
  return ok ? (MonoNowNs() - t0) / 1e6 : -1;
}

// The same tokens straight from the fake decode node.
double DirectRequest(v1::Node::Stub& stub, const v1::NodeRequest& req) {
  grpc::ClientContext ctx;
  const int64_t t0 = MonoNowNs();
  auto reader = stub.Generate(&ctx, req);
  v1::DecodeEvent ev;
  while (reader->Read(&ev)) {
  }
  return reader->Finish().ok() ? (MonoNowNs() - t0) / 1e6 : -1;
}

int Run(const Flags& f) {
  FakeServer prefill = StartFake(v1::NODE_ROLE_PREFILL, "null-prefill", f.tokens);
  FakeServer decode = StartFake(v1::NODE_ROLE_DECODE, "null-decode", f.tokens);

  const std::string bin =
      (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "pdserve").string();
  const int port = transport::internal::FreeLoopbackPort();
  std::vector<std::string> args = {
      bin,
      "router",
      "--model",
      VocabFile(),
      "--listen",
      absl::StrCat("127.0.0.1:", port),
      "--nodes",
      absl::StrCat("127.0.0.1:", prefill.port, ",127.0.0.1:", decode.port),
      "--heartbeat-ms",
      "500",
      "--max-queue",
      "100000",
      "--log-level",
      "warning"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t router_pid;
  if (posix_spawn(&router_pid, bin.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
    std::fprintf(stderr, "cannot start %s\n", bin.c_str());
    return 1;
  }
  auto stop_router = [&] {
    kill(router_pid, SIGKILL);
    waitpid(router_pid, nullptr, 0);
  };

  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  auto registry = v1::Registry::NewStub(channel);
  // Wait for the router to list both fake nodes.
  const int64_t deadline = MonoNowNs() + int64_t{20} * 1000000000;
  for (;;) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    v1::ListNodesResponse list;
    if (registry->ListNodes(&ctx, v1::ListNodesRequest(), &list).ok() && list.nodes_size() == 2)
      break;
    if (MonoNowNs() > deadline) {
      std::fprintf(stderr, "router did not pick up the fake nodes\n");
      stop_router();
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const v1::GenerateRequest req = Request(f.tokens);
  for (int i = 0; i < 200; ++i) RouterRequest(*stub, req);  // warm up

  // Latency, one request at a time.
  auto direct = v1::Node::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", decode.port),
                                                      grpc::InsecureChannelCredentials()));
  v1::NodeRequest node_req;
  node_req.set_request_id("direct");
  node_req.add_prompt(1);
  node_req.mutable_stop()->set_max_tokens(f.tokens);
  for (int i = 0; i < 200; ++i) DirectRequest(*direct, node_req);
  std::vector<double> via_router, straight;
  int failures = 0;
  for (int i = 0; i < f.requests; ++i) {
    const double r = RouterRequest(*stub, req);
    const double d = DirectRequest(*direct, node_req);
    if (r < 0 || d < 0) {
      ++failures;
      continue;
    }
    via_router.push_back(r);
    straight.push_back(d);
  }

  // Throughput with many streams at once.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> done{0}, failed{0};
  const double cpu0 = CpuSeconds(router_pid);
  const int64_t t0 = MonoNowNs();
  std::vector<std::thread> clients;
  for (int c = 0; c < f.concurrency; ++c) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        (RouterRequest(*stub, req) >= 0 ? done : failed).fetch_add(1);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(f.seconds * 1000)));
  stop = true;
  for (auto& t : clients) t.join();
  const double wall = (MonoNowNs() - t0) / 1e9;
  const double cpu = CpuSeconds(router_pid) - cpu0;
  stop_router();
  prefill.server->Shutdown();
  decode.server->Shutdown();

  std::printf(
      "router overhead, null engine: %d tokens per request (token #1 from the prefill node,\n"
      "%d streamed by the decode node), %u CPUs\n\n",
      f.tokens, f.tokens - 1, std::thread::hardware_concurrency());
  std::printf("latency, one request at a time (%zu requests, %d failed):\n", via_router.size(),
              failures);
  std::printf("  %-34s %9s %9s\n", "", "p50 ms", "p99 ms");
  std::printf("  %-34s %9.3f %9.3f\n", "client -> router -> nodes", Percentile(via_router, 0.5),
              Percentile(via_router, 0.99));
  std::printf("  %-34s %9.3f %9.3f\n", "client -> fake node (no router)", Percentile(straight, 0.5),
              Percentile(straight, 0.99));
  std::printf("  %-34s %9.3f %9.3f\n", "added by the router",
              Percentile(via_router, 0.5) - Percentile(straight, 0.5),
              Percentile(via_router, 0.99) - Percentile(straight, 0.99));
  std::printf("\nthroughput, %d concurrent streams for %.1f s:\n", f.concurrency, wall);
  std::printf("  %.0f requests/s (%.0f tokens/s streamed), %lld failed\n", done / wall,
              done * f.tokens / wall, static_cast<long long>(failed.load()));
  std::printf("  router CPU %.2f s over %.2f s wall = %.2f cores busy\n", cpu, wall, cpu / wall);
  std::printf("  %.0f requests/s per router core (requests per CPU-second of the router)\n",
              cpu > 0 ? done / cpu : 0.0);
  return failures == 0 && failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  pdserve::Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tokens")
      f.tokens = std::atoi(argv[i + 1]);
    else if (k == "--requests")
      f.requests = std::atoi(argv[i + 1]);
    else if (k == "--concurrency")
      f.concurrency = std::atoi(argv[i + 1]);
    else if (k == "--seconds")
      f.seconds = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr,
                   "usage: %s [--tokens N] [--requests N] [--concurrency N] [--seconds S]\n",
                   argv[0]);
      return 2;
    }
  }
  if (f.tokens < 2) f.tokens = 2;
  return pdserve::Run(f);
}
