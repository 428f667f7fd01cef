// Chaos on real processes: a node SIGKILLed, frozen (SIGSTOP) or with its
// engine stalled while requests are in flight, one of two routers SIGKILLed
// under load, and a soak of cancelled streams. What a client must
// see: a request that had not streamed a token when its node died is retried
// on another pair, one that had is continued on another pair, and both end
// with the tokens an uninterrupted run gives (greedy and seeded sampling);
// requests sent after the fault all succeed; the surviving nodes' KV returns
// to idle; cancelled requests leave no state on the router.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_harness.h"
#include "transport/tcp_socket.h"

namespace pdserve::itest {
namespace {

#define REQUIRE_MODEL()                                                           \
  do {                                                                            \
    if (!HaveModel()) GTEST_SKIP() << "model absent: run scripts/fetch_model.sh"; \
  } while (0)

int64_t RssKiB(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    int64_t kib = 0;
    if (absl::StartsWith(line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line.substr(6)), " kB"),
                         &kib)) {
      return kib;
    }
  }
  return -1;
}

// A prompt of about `words` words, distinct per `tag` from its first token.
std::string LongPrompt(int tag, int words) {
  std::string p = absl::StrCat("Story number ", tag, ". ");
  const char* kWords[] = {"the",   "river", "ran",    "past", "a",       "quiet",
                          "town",  "where", "people", "told", "stories", "of",
                          "ships", "and",   "storms", "at",   "night"};
  for (int i = 0; i < words; ++i) absl::StrAppend(&p, kWords[(i * 7 + tag) % 17], " ");
  return p;
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return done();
}

struct Outcome {
  std::string prompt;
  StreamResult result;
};

// Sends `prompts` at once, SIGKILLs `victim` as soon as `in_flight` says it
// holds work, and checks: a request fails only if it had streamed a token
// (every other one succeeds with the reference's tokens); requests after the
// fault all succeed; the survivors end idle; the router counted retries.
void KillNodeUnderLoad(Cluster& c, int metrics_port, const std::string& victim,
                       const std::vector<std::string>& prompts, int max_tokens,
                       const std::function<bool(const v1::NodeLoad&)>& in_flight) {
  std::map<std::string, std::vector<int32_t>> reference;
  for (const std::string& p : prompts) {
    if (reference.contains(p)) continue;
    absl::StatusOr<ReferenceOutput> ref = ReferenceGenerate(p, max_tokens);
    ASSERT_TRUE(ref.ok()) << ref.status();
    reference[p] = ref->token_ids;
  }
  std::vector<Outcome> out(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    out[i].prompt = prompts[i];
    threads.emplace_back([&, i] {
      out[i].result =
          Generate(c.generation(), GreedyRequest(prompts[i], max_tokens), absl::Seconds(240));
    });
  }
  const bool busy = WaitFor(
      [&] {
        absl::StatusOr<v1::NodeLoad> load = c.GetLoad(victim);
        return load.ok() && in_flight(*load);
      },
      absl::Seconds(60));
  c.node_process(victim).Signal(SIGKILL);
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(busy) << victim << " never held work" << c.Logs();

  for (const Outcome& o : out) {
    const StreamResult& r = o.result;
    if (!r.status.ok()) {
      // Retried before token #1, continued after it: none is lost.
      ADD_FAILURE() << "a request was lost after " << r.token_ids.size()
                    << " tokens: " << r.status.error_code() << ": " << r.status.error_message()
                    << c.Logs();
      continue;
    }
    EXPECT_EQ(r.token_ids, reference[o.prompt]) << o.prompt;
    ASSERT_TRUE(r.complete.has_value());
    // (A request may have been prefilled by the victim before it died.)
    EXPECT_NE(r.complete->decode_node(), victim);
  }
  const std::string metrics = HttpGet(metrics_port, "/metrics");
  EXPECT_GE(Metric(metrics, "pdserve:router_retries_total"), 1) << metrics;

  // After the fault: no failures, whatever the router still believes of the dead node.
  std::vector<StreamResult> after(6);
  threads.clear();
  for (size_t i = 0; i < after.size(); ++i) {
    threads.emplace_back([&, i] {
      after[i] = Generate(c.generation(), GreedyRequest("The capital of France is", 6));
    });
  }
  for (std::thread& t : threads) t.join();
  for (const StreamResult& r : after) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_code() << ": " << r.status.error_message();
  }
  for (const std::string& id : c.node_ids()) {
    if (id == victim) continue;
    EXPECT_TRUE(c.WaitForIdleKv(id, absl::Seconds(30))) << id << " kept KV blocks";
  }
}

// One of two decode nodes dies while requests are being admitted: those
// that had no token yet are served by the other one, token-exact.
TEST(ChaosTest, DecodeNodeKilledWhileAdmittingLosesNoUnstartedRequest) {
  REQUIRE_MODEL();
  const int metrics_port = transport::internal::FreeLoopbackPort();
  ClusterOptions o;
  o.n_decode = 2;
  o.router_flags = {"--metrics-port", absl::StrCat(metrics_port)};
  auto c = Cluster::Start(o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::string> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(LongPrompt(i % 2, 300));
  KillNodeUnderLoad(**c, metrics_port, "decode-1", prompts, 12,
                    [](const v1::NodeLoad& l) { return l.awaiting_kv() > 0; });
}

// One of two prefill nodes dies while 8 long prompts are being prefilled.
TEST(ChaosTest, PrefillNodeKilledMidPrefillLosesNoRequest) {
  REQUIRE_MODEL();
  const int metrics_port = transport::internal::FreeLoopbackPort();
  ClusterOptions o;
  o.n_prefill = 2;
  // The survivor prefills the dead node's prompts too: on a busy CI machine
  // that can take longer than the default KV budget.
  o.router_flags = {"--metrics-port", absl::StrCat(metrics_port), "--kv-deadline-ms", "180000"};
  auto c = Cluster::Start(o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::string> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(LongPrompt(i, 500));
  KillNodeUnderLoad(**c, metrics_port, "prefill-1", prompts, 6, [](const v1::NodeLoad& l) {
    return l.queued_prefill_tokens() > 0 || l.running() > 0;
  });
}

// The requests of the migration tests: greedy ones and seeded sampled ones
// (temperature, top-p and a frequency penalty: the continuation must carry
// the generator's position and the penalty history).
std::vector<v1::GenerateRequest> MigrationRequests(int max_tokens) {
  std::vector<v1::GenerateRequest> out;
  for (int i = 0; i < 6; ++i) {
    v1::GenerateRequest r = GreedyRequest(LongPrompt(i, 40), max_tokens);
    r.mutable_stop()->set_ignore_eos(true);
    if (i % 3 == 2) {
      r.mutable_sampling()->set_temperature(0.9f);
      r.mutable_sampling()->set_top_p(0.95f);
      r.mutable_sampling()->set_frequency_penalty(0.4f);
      r.mutable_sampling()->set_seed(1000 + i);
    }
    out.push_back(std::move(r));
  }
  return out;
}

bool HasStage(const v1::Complete& c, const std::string& stage) {
  for (const v1::StageTiming& t : c.timings().stages()) {
    if (t.stage() == stage) return true;
  }
  return false;
}

// Streams MigrationRequests through a router + 1 prefill + 2 decode nodes
// (or 2 mixed nodes), once undisturbed (the reference) and once with `signal`
// sent to decode-1 (mixed-1) while every stream has tokens and none has ended. Every stream of the
// second run must end like its reference: same tokens, text and usage, none
// duplicated or missing, the moved ones with a router.migrate stage.
// What happens to the victim node, and how it recovers.
struct Fault {
  std::function<void(ClusterOptions&)> configure;  // extra flags; optional
  std::function<void(Cluster&)> inject;
  std::function<void(Cluster&)> heal;  // after every stream ended; optional
  bool kills = false;                  // the victim does not come back
};

void MigrateMidStream(const Fault& fault, bool mixed = false) {
  const int metrics_port = transport::internal::FreeLoopbackPort();
  ClusterOptions o;
  o.n_decode = 2;
  if (mixed) o.n_mixed = 2;
  o.router_flags = {"--metrics-port",   absl::StrCat(metrics_port),
                    "--heartbeat-ms",   "250",
                    "--node-expiry-ms", "1500"};
  if (fault.configure) fault.configure(o);
  auto started = Cluster::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& c = **started;
  const std::string victim = mixed ? "mixed-1" : "decode-1";
  constexpr int kMaxTokens = 160;
  const std::vector<v1::GenerateRequest> requests = MigrationRequests(kMaxTokens);
  const size_t n = requests.size();

  std::vector<StreamResult> want(n), got(n);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] { want[i] = Generate(c.generation(), requests[i]); });
  }
  for (std::thread& t : threads) t.join();
  threads.clear();
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(want[i].status.ok()) << want[i].status.error_message() << c.Logs();
    ASSERT_EQ(want[i].token_ids.size(), static_cast<size_t>(kMaxTokens));
  }

  std::vector<std::atomic<int>> tokens(n);
  std::atomic<int> ended{0};
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      got[i] = Generate(c.generation(), requests[i], absl::Seconds(240),
                        [&, i](const v1::GenerateResponse& ev) {
                          if (ev.has_chunk()) tokens[i] += ev.chunk().token_ids_size();
                          if (ev.has_complete() || ev.has_error()) ++ended;
                          return true;
                        });
    });
  }
  const bool mid_stream = WaitFor(
      [&] {
        for (const std::atomic<int>& t : tokens) {
          if (t.load() < 2) return false;
        }
        absl::StatusOr<v1::NodeLoad> load = c.GetLoad(victim);
        return load.ok() && load->running() > 0;
      },
      absl::Seconds(60));
  const bool none_ended = ended.load() == 0;
  fault.inject(c);
  for (std::thread& t : threads) t.join();
  if (fault.heal) fault.heal(c);
  ASSERT_TRUE(mid_stream) << victim << " never streamed" << c.Logs();
  ASSERT_TRUE(none_ended) << "a stream ended before the fault: make them longer";

  int migrated = 0;
  for (size_t i = 0; i < n; ++i) {
    const StreamResult& r = got[i];
    SCOPED_TRACE(absl::StrCat("request ", i, requests[i].sampling().has_seed() ? " (seeded)" : ""));
    ASSERT_TRUE(r.status.ok()) << r.status.error_code() << ": " << r.status.error_message()
                               << c.Logs();
    EXPECT_EQ(r.token_ids, want[i].token_ids);
    EXPECT_EQ(r.text, want[i].text);
    ASSERT_TRUE(r.complete.has_value());
    EXPECT_EQ(r.complete->finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(r.complete->usage().completion_tokens(), kMaxTokens);
    EXPECT_EQ(r.complete->usage().prompt_tokens(), want[i].complete->usage().prompt_tokens());
    EXPECT_EQ(r.last_chunk_usage.completion_tokens(), kMaxTokens);
    EXPECT_NE(r.complete->decode_node(), victim);
    if (HasStage(*r.complete, "router.migrate")) ++migrated;
  }
  EXPECT_GE(migrated, 1) << "no stream was on " << victim << " when it failed";
  const std::string metrics = HttpGet(metrics_port, "/metrics");
  EXPECT_EQ(Metric(metrics, "pdserve:router_migrations_total"), migrated) << metrics;

  for (const std::string& id : c.node_ids()) {
    // A frozen node that wakes up finds its streams cancelled and frees them.
    if (id == victim && fault.kills) continue;
    EXPECT_TRUE(c.WaitForIdleKv(id, absl::Seconds(30))) << id << " kept KV blocks";
  }
  // Requests after the fault all succeed.
  StreamResult after = Generate(c.generation(), GreedyRequest("The capital of France is", 6));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

Fault SignalVictim(int sig) {
  Fault f;
  f.inject = [sig](Cluster& c) {
    for (const std::string& id : {"decode-1", "mixed-1"}) {
      for (const std::string& n : c.node_ids()) {
        if (n == id) c.node_process(id).Signal(sig);
      }
    }
  };
  if (sig == SIGSTOP) {
    f.heal = [](Cluster& c) { c.node_process("decode-1").Signal(SIGCONT); };
  }
  f.kills = sig == SIGKILL;
  return f;
}

void MigrateMidStream(int sig, bool mixed = false) { MigrateMidStream(SignalVictim(sig), mixed); }

// The decode node serving streams dies: they continue on the other one.
TEST(ChaosTest, DecodeNodeKilledMidStreamContinuesTokenExact) {
  REQUIRE_MODEL();
  MigrateMidStream(SIGKILL);
}

// Migrations are bounded by --max-retries: with 0, a stream whose decode node
// dies fails at once, explicitly, and the others are untouched.
TEST(ChaosTest, MigrationsAreBoundedByMaxRetries) {
  REQUIRE_MODEL();
  const int metrics_port = transport::internal::FreeLoopbackPort();
  ClusterOptions o;
  o.n_decode = 2;
  o.router_flags = {"--metrics-port", absl::StrCat(metrics_port), "--max-retries", "0"};
  auto started = Cluster::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& c = **started;
  constexpr int kMaxTokens = 160;
  const std::vector<v1::GenerateRequest> requests = MigrationRequests(kMaxTokens);
  const size_t n = requests.size();
  std::vector<StreamResult> got(n);
  std::vector<std::atomic<int>> tokens(n);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      got[i] = Generate(c.generation(), requests[i], absl::Seconds(240),
                        [&, i](const v1::GenerateResponse& ev) {
                          if (ev.has_chunk()) tokens[i] += ev.chunk().token_ids_size();
                          return true;
                        });
    });
  }
  const bool mid_stream = WaitFor(
      [&] {
        for (const std::atomic<int>& t : tokens) {
          if (t.load() < 2) return false;
        }
        absl::StatusOr<v1::NodeLoad> load = c.GetLoad("decode-1");
        return load.ok() && load->running() > 0;
      },
      absl::Seconds(60));
  c.node_process("decode-1").Signal(SIGKILL);
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(mid_stream) << c.Logs();
  int failed = 0;
  for (const StreamResult& r : got) {
    if (r.status.ok()) {
      EXPECT_EQ(r.token_ids.size(), static_cast<size_t>(kMaxTokens));
      continue;
    }
    ++failed;
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
    EXPECT_TRUE(absl::StrContains(r.status.error_message(), "after 0 migrations"))
        << r.status.error_message();
    EXPECT_LT(r.token_ids.size(), static_cast<size_t>(kMaxTokens));
  }
  EXPECT_GE(failed, 1);
  EXPECT_EQ(Metric(HttpGet(metrics_port, "/metrics"), "pdserve:router_migrations_total"), 0);
}

// A colocated (mixed) node dies mid-stream: its streams continue on the other.
TEST(ChaosTest, MixedNodeKilledMidStreamContinuesTokenExact) {
  REQUIRE_MODEL();
  MigrateMidStream(SIGKILL, /*mixed=*/true);
}

// The decode node freezes (SIGSTOP): its heartbeats stop, the router moves
// its streams to the other one.
TEST(ChaosTest, FrozenDecodeNodeLosesItsStreamsToTheOther) {
  REQUIRE_MODEL();
  MigrateMidStream(SIGSTOP);
}

// The engine of a decode node stops stepping with its process alive (the
// --test-stall-file seam): it keeps heartbeating, but reports the stall, so
// the router moves its streams to the other decode node (token-exact), and
// its /health fails so a liveness probe would restart it. Once the engine
// steps again the node is healthy and its KV idle.
TEST(ChaosTest, StalledEngineLosesItsStreamsAndFailsItsLivenessProbe) {
  REQUIRE_MODEL();
  const std::string stall_file =
      absl::StrCat(::testing::TempDir(), "/pdserve-chaos-stall-", ::getpid());
  std::error_code ec;
  std::filesystem::remove(stall_file, ec);
  const int health_port = transport::internal::FreeLoopbackPort();
  auto health = [&] { return HttpGet(health_port, "/health"); };
  std::string healthy_before, while_stalled;
  Fault f;
  f.configure = [&](ClusterOptions& o) {
    o.flags_by_node["decode-1"] = {
        "--test-stall-file",        stall_file, "--stall-timeout", "1",
        "--liveness-stall-timeout", "2",        "--metrics-port",  absl::StrCat(health_port)};
    o.router_flags.insert(o.router_flags.end(), {"--migrate-after-stall-ms", "1000"});
  };
  f.inject = [&](Cluster&) {
    healthy_before = health();
    std::ofstream(stall_file) << "stalled by chaos_test\n";
  };
  f.heal = [&](Cluster&) {
    // Every stream moved off it; it is still stalled, and now not live.
    WaitFor([&] { return absl::StartsWith(health(), "engine stalled"); }, absl::Seconds(30));
    while_stalled = health();
    std::filesystem::remove(stall_file, ec);
    EXPECT_TRUE(WaitFor([&] { return health() == "ok\n"; }, absl::Seconds(30))) << health();
  };
  MigrateMidStream(f);
  EXPECT_EQ(healthy_before, "ok\n");
  EXPECT_TRUE(absl::StrContains(while_stalled, "liveness limit 2000 ms")) << while_stalled;
}

// Two routers over one node pool (every node registers with both), each
// under steady load; one is SIGKILLed. Its clients' streams fail explicitly
// (UNAVAILABLE) within 1 s, and the nodes free their KV within 2 s; every
// request through the other router succeeds, token-exact, before and after
// the fault; at the end every node's KV is back to idle.
TEST(ChaosTest, OneOfTwoRoutersKilledUnderLoadLosesOnlyItsOwnStreams) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.n_routers = 2;
  o.router_flags = {"--heartbeat-ms", "250", "--node-expiry-ms", "1500"};
  auto started = Cluster::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& c = **started;
  const std::string kShort = "The capital of France is";
  constexpr int kShortTokens = 8, kLongTokens = 600;
  absl::StatusOr<ReferenceOutput> ref = ReferenceGenerate(kShort, kShortTokens);
  ASSERT_TRUE(ref.ok()) << ref.status();
  absl::StatusOr<v1::ListNodesResponse> nodes = c.ListNodes(1);
  ASSERT_TRUE(nodes.ok() && nodes->nodes_size() == 2) << c.Logs();
  const int block_size = nodes->nodes(0).info().block_size();
  ASSERT_GT(block_size, 0);

  // Router 0: long streams that are still running when it dies.
  constexpr int kDoomed = 3;
  std::vector<StreamResult> doomed(kDoomed);
  std::vector<absl::Time> doomed_end(kDoomed);
  std::vector<std::atomic<int>> doomed_tokens(kDoomed);
  std::vector<std::thread> threads;
  for (int i = 0; i < kDoomed; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest r = GreedyRequest(LongPrompt(i, 20), kLongTokens);
      r.mutable_stop()->set_ignore_eos(true);
      doomed[i] =
          Generate(c.generation(0), r, absl::Seconds(240), [&, i](const v1::GenerateResponse& ev) {
            if (ev.has_chunk()) doomed_tokens[i] += ev.chunk().token_ids_size();
            return true;
          });
      doomed_end[i] = absl::Now();
    });
  }
  // Router 1: short requests back to back from two clients until told to stop.
  std::atomic<bool> stop{false};
  std::atomic<absl::Time*> kill_time{nullptr};
  absl::Mutex mu;
  int served_before = 0, served_after = 0;
  std::vector<std::string> failures;
  std::vector<std::thread> steady;
  for (int t = 0; t < 2; ++t) {
    steady.emplace_back([&] {
      while (!stop.load()) {
        const bool after = kill_time.load() != nullptr;
        StreamResult r = Generate(c.generation(1), GreedyRequest(kShort, kShortTokens));
        absl::MutexLock lock(&mu);
        if (!r.status.ok()) {
          failures.push_back(absl::StrCat(r.status.error_code(), ": ", r.status.error_message()));
        } else if (r.token_ids != ref->token_ids) {
          failures.push_back("tokens differ from pdserve generate's");
        } else {
          ++(after ? served_after : served_before);
        }
      }
    });
  }
  const bool loaded = WaitFor(
      [&] {
        for (const std::atomic<int>& n : doomed_tokens) {
          if (n.load() < 1) return false;
        }
        absl::MutexLock lock(&mu);
        return served_before > 0;
      },
      absl::Seconds(90));

  absl::Time killed = absl::Now();
  c.router_process(0).Signal(SIGKILL);
  kill_time = &killed;
  // The doomed streams leave the nodes: no node commits KV for even one of them.
  const int one_doomed_blocks = kLongTokens / block_size;
  auto doomed_gone = [&] {
    for (const std::string& id : c.node_ids()) {
      absl::StatusOr<v1::NodeLoad> l = c.GetLoad(id);
      if (!l.ok() || l->committed_kv_blocks() >= one_doomed_blocks) return false;
    }
    return true;
  };
  const bool freed = WaitFor(doomed_gone, absl::Seconds(2));
  const absl::Duration to_free = absl::Now() - killed;
  for (std::thread& t : threads) t.join();
  absl::SleepFor(absl::Seconds(3));  // router 1 keeps serving
  stop = true;
  for (std::thread& t : steady) t.join();
  ASSERT_TRUE(loaded) << "the load never reached both routers" << c.Logs();

  EXPECT_TRUE(freed) << "the nodes still hold the dead router's requests "
                     << absl::FormatDuration(to_free) << " after it died" << c.Logs();
  for (int i = 0; i < kDoomed; ++i) {
    SCOPED_TRACE(absl::StrCat("stream ", i, " through the killed router"));
    EXPECT_EQ(doomed[i].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << doomed[i].status.error_message();
    EXPECT_LT(doomed_end[i] - killed, absl::Seconds(1));
    EXPECT_LT(static_cast<int>(doomed[i].token_ids.size()), kLongTokens);
  }
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures[0]
                                  << c.Logs();
    EXPECT_GT(served_after, 0);
  }
  for (const std::string& id : c.node_ids()) {
    EXPECT_TRUE(c.WaitForIdleKv(id, absl::Seconds(30))) << id << " kept KV blocks";
  }
  // The survivor still has the whole pool.
  absl::StatusOr<v1::ListNodesResponse> after = c.ListNodes(1);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->nodes_size(), 2);
}

// Two routers share one decode node of 48 KV blocks; a request may grow to
// 38 (prompt + 600 tokens). Router 0's request runs; router 1's arrives once
// router 1 shows the node's report of it: router 1 must see the node's
// commitment and wait (not admit a second 38 on 10 free blocks), then serve
// it when the first ends. Before nodes reported commitments, each router
// counted only its own work and both were admitted. (With 200 tokens the
// first request ended inside the old fixed 1 s wait on a fast Xeon.)
TEST(ChaosTest, TwoRoutersDoNotOvercommitASharedDecodeNode) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.n_routers = 2;
  o.router_flags = {"--heartbeat-ms", "250"};
  constexpr int kBlocks = 48;
  o.decode_flags = {"--kv-blocks", absl::StrCat(kBlocks)};
  auto started = Cluster::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& c = **started;
  constexpr int kTokens = 600;
  constexpr int kFirstCommits = kTokens / 16;  // blocks of 16 tokens, prompt aside
  auto request = [&](int tag) {
    v1::GenerateRequest r = GreedyRequest(absl::StrCat("Tell me story ", tag, "."), kTokens);
    r.mutable_stop()->set_ignore_eos(true);
    return r;
  };
  std::atomic<int> first_tokens{0};
  std::atomic<bool> first_done{false}, second_started_early{false};
  int64_t max_committed = 0;
  StreamResult first, second;
  std::thread t0([&] {
    first = Generate(c.generation(0), request(0), absl::Seconds(240),
                     [&](const v1::GenerateResponse& ev) {
                       if (ev.has_chunk()) first_tokens += ev.chunk().token_ids_size();
                       return true;
                     });
    first_done = true;
  });
  // Router 1 has had the node's report of the first request (heartbeats
  // every 250 ms, corrections kept 500 ms).
  const bool reported = WaitFor(
      [&] {
        if (first_done.load()) return true;
        absl::StatusOr<v1::ListNodesResponse> seen = c.ListNodes(1);
        if (!seen.ok()) return false;
        for (const auto& n : seen->nodes()) {
          if (n.info().node_id() == "decode-0" && n.load().committed_kv_blocks() >= kFirstCommits)
            return true;
        }
        return false;
      },
      absl::Seconds(60));
  absl::SleepFor(absl::Milliseconds(600));  // past the router's 500 ms correction window too
  if (!reported || first_done.load()) {
    t0.join();  // never leave a joinable thread behind an assertion
    FAIL() << (reported ? "the first request ended too soon: make it longer"
                        : "router 1 never showed the node's commitment")
           << c.Logs();
  }
  std::thread t1([&] {
    second = Generate(c.generation(1), request(1), absl::Seconds(240),
                      [&](const v1::GenerateResponse& ev) {
                        if (ev.has_chunk() && !first_done.load()) second_started_early = true;
                        return true;
                      });
  });
  while (!first_done.load()) {
    absl::StatusOr<v1::NodeLoad> l = c.GetLoad("decode-0");
    if (l.ok()) max_committed = std::max(max_committed, l->committed_kv_blocks());
    absl::SleepFor(absl::Milliseconds(20));
  }
  t0.join();
  t1.join();
  ASSERT_TRUE(first.status.ok()) << first.status.error_message() << c.Logs();
  ASSERT_TRUE(second.status.ok()) << second.status.error_message() << c.Logs();
  EXPECT_EQ(second.token_ids.size(), static_cast<size_t>(kTokens));
  EXPECT_FALSE(second_started_early.load())
      << "router 1 admitted a request the node had no room for";
  EXPECT_LE(max_committed, kBlocks);
  EXPECT_GE(max_committed, kFirstCommits);  // the first request was seen committed
  EXPECT_TRUE(c.WaitForIdleKv("decode-0", absl::Seconds(30)));
}

// A client that stops reading its stream (its HTTP/2 window is kept at a
// few events) must not hold the router's memory or a node's KV: the router
// buffers --max-stream-events events, then aborts the request on the nodes
// and ends the stream with RESOURCE_EXHAUSTED; meanwhile other requests and
// Abort are served. When the client reads again it gets what was buffered
// and that status.
TEST(ChaosTest, ClientThatStopsReadingIsCutOffAndFreesItsKv) {
  REQUIRE_MODEL();
  const int metrics_port = transport::internal::FreeLoopbackPort();
  ClusterOptions o;
  o.router_flags = {"--metrics-port", absl::StrCat(metrics_port), "--max-stream-events", "8"};
  auto started = Cluster::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& c = **started;
  auto tracked = [&] {
    return Metric(HttpGet(metrics_port, "/metrics"), "pdserve:router_tracked_requests");
  };

  // Its own connection, announcing a small window and no BDP growth.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto slow_channel =
      grpc::CreateCustomChannel(c.router_address(), grpc::InsecureChannelCredentials(), args);
  auto slow_stub = v1::Generation::NewStub(slow_channel);
  grpc::ClientContext slow_ctx;
  slow_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(240));
  v1::GenerateRequest slow_req = GreedyRequest("Tell me a long story about the sea.", 1500);
  slow_req.set_request_id("never-reads");
  slow_req.mutable_stop()->set_ignore_eos(true);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      slow_stub->Generate(&slow_ctx, slow_req);

  // Cut off: the router forgets it and the node frees its KV, long before
  // 1,500 tokens.
  ASSERT_TRUE(WaitFor([&] { return tracked() == 1; }, absl::Seconds(30))) << tracked();
  EXPECT_TRUE(WaitFor([&] { return tracked() == 0; }, absl::Seconds(120)))
      << "the router still tracks a stream nobody reads" << c.Logs();
  for (const std::string& id : c.node_ids()) {
    EXPECT_TRUE(c.WaitForIdleKv(id, absl::Seconds(30))) << id << " kept the stream's KV";
  }
  // Meanwhile the router serves others and answers Abort.
  StreamResult other = Generate(c.generation(), GreedyRequest("The capital of France is", 6));
  EXPECT_TRUE(other.status.ok()) << other.status.error_message();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::AbortRequest req;
    req.set_request_id("never-reads");
    v1::AbortResponse resp;
    const grpc::Status st = c.generation().Abort(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(resp.found());  // over already
  }

  // Reading again: the buffered events, then the reason.
  int tokens = 0;
  v1::GenerateResponse ev;
  while (reader->Read(&ev)) {
    if (ev.has_chunk()) tokens += ev.chunk().token_ids_size();
  }
  const grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "not reading")) << st.error_message();
  EXPECT_GT(tokens, 0);
  EXPECT_LT(tokens, 1500);
}

// 2,000 streams cancelled by their clients (half after the first token,
// half at once) leave nothing on the router: its tracked requests go back
// to zero, its RSS stays flat, and the nodes' KV is idle.
TEST(ChaosTest, CancelSoakLeavesNoRouterState) {
  REQUIRE_MODEL();
  const int metrics_port = transport::internal::FreeLoopbackPort();
  ClusterOptions o;
  o.router_flags = {"--metrics-port", absl::StrCat(metrics_port)};
  auto started = Cluster::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& c = **started;
  constexpr int kThreads = 8;
  std::atomic<int> next{0}, not_cancelled{0};
  auto soak = [&](int n) {
    next = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        for (int i; (i = next.fetch_add(1)) < n;) {
          v1::GenerateRequest r = GreedyRequest("Tell me a long story about the sea.", 64);
          r.mutable_stop()->set_ignore_eos(true);
          StreamResult got;
          if (i % 2 == 0) {
            got = Generate(c.generation(), r, absl::Seconds(60),
                           [](const v1::GenerateResponse& ev) { return !ev.has_chunk(); });
          } else {
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
            std::thread cancel([&ctx] { ctx.TryCancel(); });
            got = Generate(c.generation(), r, absl::Seconds(60), nullptr, &ctx);
            cancel.join();
          }
          if (got.status.error_code() != grpc::StatusCode::CANCELLED) ++not_cancelled;
        }
      });
    }
    for (std::thread& t : threads) t.join();
  };
  auto tracked = [&] {
    return Metric(HttpGet(metrics_port, "/metrics"), "pdserve:router_tracked_requests");
  };
  // Warm-up as long as the measured run: malloc's per-thread arenas and
  // gRPC's buffers settle (after 200 warm-up streams the measured growth
  // still swung from 0.5 to 1.3 MiB between runs); a leak grows again below.
  soak(2000);
  ASSERT_TRUE(WaitFor([&] { return tracked() == 0; }, absl::Seconds(30))) << tracked();
  const int64_t rss_before = RssKiB(c.router_process().pid());
  soak(2000);
  EXPECT_TRUE(WaitFor([&] { return tracked() == 0; }, absl::Seconds(30)))
      << tracked() << " requests still tracked after every stream was cancelled";
  const int64_t rss_after = RssKiB(c.router_process().pid());
  std::fprintf(stderr, "router RSS %lld -> %lld KiB over 2,000 cancelled streams\n",
               static_cast<long long>(rss_before), static_cast<long long>(rss_after));
  // The leak this guards against held ~2 KiB per cancelled call (4 MiB here);
  // the bound is the 5 MiB per 10,000 cancels, scaled to 2,000.
  EXPECT_LT(rss_after - rss_before, 5 * 1024 * 2000 / 10000)
      << rss_before << " KiB -> " << rss_after << " KiB";
  // A stream whose request finished before the cancel landed is fine, but
  // nearly all must have been cancelled.
  EXPECT_LT(not_cancelled.load(), 200);
  for (const std::string& id : c.node_ids()) {
    EXPECT_TRUE(c.WaitForIdleKv(id, absl::Seconds(30))) << id << " kept KV blocks";
  }
  EXPECT_TRUE(Generate(c.generation(), GreedyRequest("Hello", 3)).status.ok());
}

// The child of `parent` whose command line holds `needle`, or -1.
pid_t ChildWith(pid_t parent, const std::string& needle) {
  for (pid_t pid : ChildrenOf(parent)) {
    std::string cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (absl::StrContains(cmdline, needle)) return pid;
  }
  return -1;
}

// `pdserve cluster` with two decode nodes keeps serving when one dies,
// restarts it, and the restarted node registers and serves again.
TEST(ChaosTest, ClusterRestartsADeadNodeWhenItsRoleHasAnother) {
  REQUIRE_MODEL();
  const std::string dir = ::testing::TempDir();
  const std::string token_file = absl::StrCat(dir, "/", getpid(), "-chaos-token");
  { std::ofstream(token_file) << "chaos-node-token-7\n"; }
  const int port = transport::internal::FreeLoopbackPort();
  const std::string log = absl::StrCat(dir, "/", getpid(), "-chaos-cluster.log");
  auto cluster = ChildProcess::Start(
      "cluster",
      {PdserveBinary(), "cluster", "--model", ModelPath(), "--port", std::to_string(port),
       "--prefill", "1", "--decode", "2", "--threads", "1", "--node-token-file", token_file,
       "--router-flags", "--heartbeat-ms 250 --node-expiry-ms 1500"},
      log);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ChildProcess& sup = **cluster;
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(ReadFile(log), "cluster ready"); },
                      absl::Seconds(120)))
      << sup.LogTail();
  const pid_t victim = ChildWith(sup.pid(), "--node-id decode-1");
  ASSERT_GT(victim, 0);

  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto generation = v1::Generation::NewStub(channel);
  auto registry = v1::Registry::NewStub(channel);
  auto listed = [&](const std::string& id) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer chaos-node-token-7");
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListNodesResponse resp;
    if (!registry->ListNodes(&ctx, v1::ListNodesRequest(), &resp).ok()) return false;
    for (const auto& e : resp.nodes()) {
      if (e.info().node_id() == id) return true;
    }
    return false;
  };
  ASSERT_TRUE(listed("decode-1"));

  ::kill(victim, SIGKILL);
  // Meanwhile the cluster serves (the other decode node).
  for (int i = 0; i < 4; ++i) {
    StreamResult r = Generate(*generation, GreedyRequest("The capital of France is", 4));
    EXPECT_TRUE(r.status.ok()) << r.status.error_message() << "\n" << sup.LogTail();
  }
  EXPECT_TRUE(WaitFor([&] { return absl::StrContains(ReadFile(log), "restarted decode-1"); },
                      absl::Seconds(60)))
      << sup.LogTail();
  EXPECT_TRUE(sup.Running()) << "the cluster stopped when a node it could replace died";
  pid_t again = -1;
  EXPECT_TRUE(WaitFor(
      [&] {
        again = ChildWith(sup.pid(), "--node-id decode-1");
        return again > 0 && again != victim && listed("decode-1");
      },
      absl::Seconds(90)))
      << sup.LogTail();
  EXPECT_TRUE(WaitFor([&] { return absl::StrContains(ReadFile(log), "decode-1 is back"); },
                      absl::Seconds(30)))
      << "the restarted node's secret files were not removed once it registered";
  // Both decode nodes serve again.
  std::vector<StreamResult> results(6);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = Generate(*generation, GreedyRequest("The capital of France is", 4));
    });
  }
  for (std::thread& t : threads) t.join();
  for (const StreamResult& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  }
  sup.Signal(SIGTERM);
  EXPECT_TRUE(sup.WaitExit(absl::Seconds(60)).has_value());
  std::remove(token_file.c_str());
}

}  // namespace
}  // namespace pdserve::itest
