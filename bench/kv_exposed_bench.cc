// Exposed KV transfer with the real model: how much of the prefill -> decode
// KV shipping the layer-wise overlap fails to hide.
//
// Starts two deployments from the built `pdserve` binary on loopback: a
// disaggregated one (router + prefill node + decode node, KV over TCP) and a
// colocated one (router + one mixed node), every node with the same
// --threads. For prompts of 128, 512 and 2048 tokens (random token ids, so
// no prefix-cache hits) it sends the same prompt to each, one request at a
// time, and prints medians of:
//   ttft disagg   client-measured time to token #1 through the P/D cluster
//   ttft mixed    the same through the mixed node (prefill alone, no transfer)
//   exposed       ttft disagg - ttft mixed, also as a share of ttft disagg
//   compute P     the prefill node's own prefill.compute
//   compute mix   the mixed node's prefill.compute (same work, no KV sink)
//   ttft-comp     ttft disagg - compute P: what token #1 waits for besides
//                 the prefill compute (router, RPCs, prefill queue)
//   kv tail       prefill.compute end -> decode.wait_kv end, both placed on
//                 the router's timeline: the part of the transfer (and of
//                 the decode node's KV wait) not hidden behind compute,
//                 which is what delays token #2
//
//   build/bin/kv_exposed_bench [--threads 1] [--runs 5] [--lengths 128,512,2048]
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/clock.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "pdserve/v1/node.grpc.pb.h"
#include "transport/tcp_socket.h"

extern char** environ;

namespace pdserve {
namespace {

struct Flags {
  int threads = 1;
  int runs = 5;
  std::vector<int> lengths = {128, 512, 2048};
};

std::vector<pid_t> g_children;

pid_t Spawn(std::vector<std::string> args, const std::string& log) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0].c_str(), &fa, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  if (pid > 0) g_children.push_back(pid);
  return pid;
}

void KillAll() {
  for (pid_t p : g_children) kill(p, SIGTERM);
  for (pid_t p : g_children) waitpid(p, nullptr, 0);
  g_children.clear();
}

struct Deployment {
  std::string router;
  std::unique_ptr<v1::Generation::Stub> stub;
};

// Starts a router and `roles` nodes registered with it; waits until listed.
bool Start(const std::string& bin, const std::string& model, const std::vector<std::string>& roles,
           int threads, const std::string& logdir, Deployment* d) {
  const int port = transport::internal::FreeLoopbackPort();
  d->router = absl::StrCat("127.0.0.1:", port);
  Spawn({bin, "router", "--model", model, "--listen", d->router, "--log-level", "warning"},
        absl::StrCat(logdir, "/router-", port, ".log"));
  for (size_t i = 0; i < roles.size(); ++i) {
    Spawn({bin, roles[i], "--model", model, "--listen", "127.0.0.1:0", "--router", d->router,
           "--node-id", absl::StrCat(roles[i], "-", i), "--threads", std::to_string(threads),
           "--log-level", "warning"},
          absl::StrCat(logdir, "/", roles[i], "-", port, ".log"));
  }
  auto channel = grpc::CreateChannel(d->router, grpc::InsecureChannelCredentials());
  d->stub = v1::Generation::NewStub(channel);
  auto registry = v1::Registry::NewStub(channel);
  const int64_t deadline = MonoNowNs() + int64_t{120} * 1000000000;
  while (MonoNowNs() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    v1::ListNodesResponse list;
    if (registry->ListNodes(&ctx, v1::ListNodesRequest(), &list).ok() &&
        list.nodes_size() == static_cast<int>(roles.size())) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

struct Sample {
  double ttft_ms = -1;
  std::map<std::string, std::pair<double, double>> stages;  // start, end (ms, router timeline)
};

Sample Send(v1::Generation::Stub& stub, const std::vector<int32_t>& prompt) {
  v1::GenerateRequest req;
  req.mutable_token_ids()->mutable_ids()->Assign(prompt.begin(), prompt.end());
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stop()->set_max_tokens(2);
  req.mutable_stop()->set_ignore_eos(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(600));
  Sample s;
  const int64_t t0 = MonoNowNs();
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    if (resp.has_chunk() && s.ttft_ms < 0) s.ttft_ms = (MonoNowNs() - t0) / 1e6;
    if (resp.has_complete()) {
      for (const auto& t : resp.complete().timings().stages()) {
        s.stages[t.stage()] = {t.start_ns() / 1e6, (t.start_ns() + t.duration_ns()) / 1e6};
      }
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) {
    std::fprintf(stderr, "request failed: %s\n", st.error_message().c_str());
    s.ttft_ms = -1;
  }
  return s;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run(const Flags& f) {
  const std::string model =
      std::string(PDSERVE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) {
    std::fprintf(stderr, "model absent: run scripts/fetch_model.sh\n");
    return 1;
  }
  const std::string bin =
      (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "pdserve").string();
  char tmpl[] = "/tmp/kv-exposed-XXXXXX";
  const std::string logdir = mkdtemp(tmpl);
  Deployment disagg, mixed;
  if (!Start(bin, model, {"prefill", "decode"}, f.threads, logdir, &disagg) ||
      !Start(bin, model, {"mixed"}, f.threads, logdir, &mixed)) {
    std::fprintf(stderr, "deployments did not come up; logs in %s\n", logdir.c_str());
    KillAll();
    return 1;
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(1000, 40000);
  auto prompt_of = [&](int n) {
    std::vector<int32_t> p(n);
    for (int32_t& t : p) t = token(rng);
    return p;
  };
  Send(*disagg.stub, prompt_of(16));  // warm up both paths
  Send(*mixed.stub, prompt_of(16));

  std::printf(
      "exposed KV transfer, real model, %d thread(s) per node, median of %d runs, %u CPUs\n",
      f.threads, f.runs, std::thread::hardware_concurrency());
  std::printf("%7s %12s %12s %10s %8s %12s %12s %12s %10s\n", "prompt", "ttft disagg", "ttft mixed",
              "exposed", "share", "compute P", "compute mix", "ttft-comp", "kv tail");
  int failures = 0;
  for (int n : f.lengths) {
    std::vector<double> td, tm, compute, compute_mixed, tail;
    for (int r = 0; r < f.runs; ++r) {
      // A fresh prompt for each path, so neither sees a prefix-cache hit;
      // the order alternates so that neither path always runs second.
      Sample d, m;
      if (r % 2 == 0) {
        d = Send(*disagg.stub, prompt_of(n));
        m = Send(*mixed.stub, prompt_of(n));
      } else {
        m = Send(*mixed.stub, prompt_of(n));
        d = Send(*disagg.stub, prompt_of(n));
      }
      if (d.ttft_ms < 0 || m.ttft_ms < 0 || !d.stages.count("prefill.compute") ||
          !d.stages.count("decode.wait_kv") || !m.stages.count("prefill.compute")) {
        ++failures;
        continue;
      }
      auto length = [](const std::pair<double, double>& iv) { return iv.second - iv.first; };
      td.push_back(d.ttft_ms);
      tm.push_back(m.ttft_ms);
      compute.push_back(length(d.stages["prefill.compute"]));
      compute_mixed.push_back(length(m.stages["prefill.compute"]));
      tail.push_back(d.stages["decode.wait_kv"].second - d.stages["prefill.compute"].second);
    }
    const double exposed = Median(td) - Median(tm);
    std::printf("%7d %9.1f ms %9.1f ms %7.1f ms %7.1f%% %9.1f ms %9.1f ms %9.1f ms %7.1f ms\n", n,
                Median(td), Median(tm), exposed, Median(td) > 0 ? 100 * exposed / Median(td) : 0.0,
                Median(compute), Median(compute_mixed), Median(td) - Median(compute), Median(tail));
    std::fflush(stdout);
  }
  KillAll();
  std::filesystem::remove_all(logdir);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  pdserve::Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--threads") {
      f.threads = std::atoi(argv[i + 1]);
    } else if (k == "--runs") {
      f.runs = std::atoi(argv[i + 1]);
    } else if (k == "--lengths") {
      f.lengths.clear();
      for (absl::string_view s : absl::StrSplit(argv[i + 1], ',')) {
        int n;
        if (absl::SimpleAtoi(s, &n) && n > 0) f.lengths.push_back(n);
      }
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--runs N] [--lengths 128,512,2048]\n",
                   argv[0]);
      return 2;
    }
  }
  return pdserve::Run(f);
}
