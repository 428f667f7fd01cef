// The cluster when things go wrong: a node that stops heartbeating, a KV
// transfer that misses its deadline, a decode node whose KV cache is full;
// and the colocated (mixed node) deployment. Each test starts its own
// processes (they stop, starve or reconfigure them).
#include <signal.h>

#include <atomic>
#include <functional>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_harness.h"

namespace pdserve::itest {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

#define REQUIRE_MODEL()                                                           \
  do {                                                                            \
    if (!HaveModel()) GTEST_SKIP() << "model absent: run scripts/fetch_model.sh"; \
  } while (0)

std::unique_ptr<Cluster> StartOrFail(const ClusterOptions& o) {
  auto c = Cluster::Start(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

bool Lists(const v1::ListNodesResponse& list, const std::string& id) {
  for (const auto& e : list.nodes()) {
    if (e.info().node_id() == id) return true;
  }
  return false;
}

// A decode node that stops heartbeating (SIGSTOP: alive but silent) is
// dropped after the expiry; requests then go to the other decode node and
// succeed. When it resumes it registers again.
TEST(ClusterFaultTest, SilentDecodeNodeIsDroppedAndTrafficMovesToTheOther) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.n_decode = 2;
  o.router_flags = {"--heartbeat-ms", "250", "--node-expiry-ms", "1500"};
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(Generate(c->generation(), GreedyRequest("Hello", 2)).status.ok());

  c->node_process("decode-1").Signal(SIGSTOP);
  EXPECT_TRUE(
      c->WaitForNodes([](const auto& l) { return !Lists(l, "decode-1"); }, absl::Seconds(30)))
      << "the router still lists the silent node";
  // Several at once: with both nodes listed they would spread over both.
  std::vector<StreamResult> results(6);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = Generate(c->generation(), GreedyRequest("The capital of France is", 6),
                            absl::Seconds(60));
    });
  }
  for (std::thread& t : threads) t.join();
  for (const StreamResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_code() << ": " << r.status.error_message();
    ASSERT_TRUE(r.complete.has_value());
    EXPECT_EQ(r.complete->decode_node(), "decode-0");
  }

  c->node_process("decode-1").Signal(SIGCONT);
  EXPECT_TRUE(
      c->WaitForNodes([](const auto& l) { return Lists(l, "decode-1"); }, absl::Seconds(30)))
      << "the node did not register again after it resumed";
  EXPECT_TRUE(Generate(c->generation(), GreedyRequest("Hello", 2)).status.ok());
}

// The prefill node stalls (SIGSTOP) after the request was dispatched: the
// decode node's KV wait passes its deadline, the client gets an explicit
// DEADLINE_EXCEEDED naming the KV transfer (not a hang), and the decode
// node's blocks return at once, while the prefill node is still stopped.
TEST(ClusterFaultTest, StalledPrefillNodeGivesKvDeadlineErrorAndFreesBlocks) {
  REQUIRE_MODEL();
  ClusterOptions o;
  // Long expiry: the stalled node must stay listed so that it is chosen.
  o.router_flags = {"--kv-deadline-ms", "1500", "--node-expiry-ms", "60000"};
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(Generate(c->generation(), GreedyRequest("Hello", 2)).status.ok());

  c->node_process("prefill-0").Signal(SIGSTOP);
  StreamResult got =
      Generate(c->generation(), GreedyRequest("The capital of France is", 8), absl::Seconds(60));
  EXPECT_EQ(got.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << got.status.error_message();
  EXPECT_THAT(got.status.error_message(), HasSubstr("KV transfer"));
  EXPECT_TRUE(got.token_ids.empty());
  EXPECT_TRUE(c->WaitForIdleKv("decode-0", absl::Seconds(10)))
      << "the decode node kept the blocks of a transfer that expired";

  c->node_process("prefill-0").Signal(SIGCONT);
  EXPECT_TRUE(c->WaitForIdleKv("prefill-0", absl::Seconds(30)));
  StreamResult after = Generate(c->generation(), GreedyRequest("Hello", 3));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

// A KV budget too small for any transfer: every request fails with an
// error that names the KV transfer; both nodes free their blocks.
TEST(ClusterFaultTest, TinyKvDeadlineFailsExplicitlyAndFreesBlocks) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.router_flags = {"--kv-deadline-ms", "1"};
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);
  std::string prompt;
  for (int i = 0; i < 40; ++i) absl::StrAppend(&prompt, "The quick brown fox jumps. ");
  for (int i = 0; i < 3; ++i) {
    StreamResult got = Generate(c->generation(), GreedyRequest(prompt, 8), absl::Seconds(60));
    EXPECT_FALSE(got.status.ok());
    EXPECT_EQ(got.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << got.status.error_message();
    EXPECT_THAT(got.status.error_message(), HasSubstr("KV transfer"));
    EXPECT_FALSE(got.complete.has_value());
  }
  EXPECT_TRUE(c->WaitForIdleKv("decode-0", absl::Seconds(30)));
  EXPECT_TRUE(c->WaitForIdleKv("prefill-0", absl::Seconds(30)));
  EXPECT_TRUE(c->router_process().Running());
}

// A decode node with a tiny KV cache: requests that do not fit now wait in
// the router's queue and all complete; past the queue bound they get
// RESOURCE_EXHAUSTED; a request larger than the whole cache is
// INVALID_ARGUMENT. Nothing crashes and every block comes back.
TEST(ClusterFaultTest, FullDecodeKvQueuesOrRejectsWithoutCrashing) {
  REQUIRE_MODEL();
  ClusterOptions o;
  // 6 blocks of 16 tokens: one request of prompt + 60 tokens at a time.
  o.decode_flags = {"--kv-blocks", "6"};
  o.router_flags = {"--max-queue", "2"};
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);

  auto request = [](int i) {
    v1::GenerateRequest r = GreedyRequest("The capital of France is", 60);
    r.mutable_stop()->set_ignore_eos(true);
    r.set_request_id(absl::StrCat("full-", i));
    return r;
  };
  // Three fit the queue (one runs, two wait): all complete.
  {
    std::vector<StreamResult> results(3);
    std::vector<std::thread> threads;
    for (size_t i = 0; i < results.size(); ++i) {
      threads.emplace_back([&, i] { results[i] = Generate(c->generation(), request(i)); });
    }
    for (std::thread& t : threads) t.join();
    for (const StreamResult& r : results) {
      ASSERT_TRUE(r.status.ok()) << r.status.error_code() << ": " << r.status.error_message();
      EXPECT_EQ(r.complete->usage().completion_tokens(), 60);
    }
  }
  // Eight at once: the ones past the queue bound are refused, clearly.
  {
    std::vector<StreamResult> results(8);
    std::vector<std::thread> threads;
    for (size_t i = 0; i < results.size(); ++i) {
      threads.emplace_back([&, i] { results[i] = Generate(c->generation(), request(10 + i)); });
    }
    for (std::thread& t : threads) t.join();
    int ok = 0, refused = 0;
    for (const StreamResult& r : results) {
      if (r.status.ok()) {
        ++ok;
        EXPECT_EQ(r.complete->usage().completion_tokens(), 60);
      } else {
        ++refused;
        EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
            << r.status.error_message();
        EXPECT_THAT(r.status.error_message(), HasSubstr("queue"));
      }
    }
    EXPECT_GE(ok, 1);
    EXPECT_GE(refused, 1);
  }
  // Never fits: prompt + max_tokens needs more blocks than the node has.
  {
    v1::GenerateRequest r = GreedyRequest("The capital of France is", 200);
    StreamResult got = Generate(c->generation(), r);
    EXPECT_EQ(got.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << got.status.error_message();
    EXPECT_THAT(got.status.error_message(), HasSubstr("KV blocks"));
  }
  EXPECT_TRUE(c->WaitForIdleKv("decode-0", absl::Seconds(30)));
  EXPECT_TRUE(c->router_process().Running());
  EXPECT_TRUE(c->node_process("decode-0").Running());
  EXPECT_TRUE(c->node_process("prefill-0").Running());
}

// --max-queue 0: nothing waits. A request that fits now is served; one that
// would have to wait is refused with RESOURCE_EXHAUSTED.
TEST(ClusterFaultTest, ZeroQueueServesWhatFitsAndRefusesTheRest) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.decode_flags = {"--kv-blocks", "6"};
  o.router_flags = {"--max-queue", "0"};
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);
  StreamResult first = Generate(c->generation(), GreedyRequest("Hello", 4));
  ASSERT_TRUE(first.status.ok()) << first.status.error_code() << ": "
                                 << first.status.error_message();

  // While one long request holds the cache, a second is refused.
  v1::GenerateRequest long_req = GreedyRequest("The capital of France is", 60);
  long_req.mutable_stop()->set_ignore_eos(true);
  std::atomic<bool> streaming{false}, ended{false};
  StreamResult long_result;
  std::thread t([&] {
    long_result =
        Generate(c->generation(), long_req, absl::Seconds(120), [&](const v1::GenerateResponse&) {
          streaming = true;
          return true;
        });
    ended = true;
  });
  while (!streaming.load() && !ended.load()) absl::SleepFor(absl::Milliseconds(5));
  StreamResult second = Generate(c->generation(), long_req);
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << second.status.error_message();
  t.join();
  EXPECT_TRUE(long_result.status.ok()) << long_result.status.error_message();
  EXPECT_TRUE(c->WaitForIdleKv("decode-0", absl::Seconds(30)));
}

// The colocated deployment through the same router: a mixed node gives the
// single-process greedy tokens, and a cancelled stream frees its KV.
TEST(ClusterFaultTest, MixedNodeMatchesSingleProcessAndFreesKvOnCancel) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.n_mixed = 1;
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);
  for (const std::string prompt :
       {"The capital of France is",
        "def fibonacci(n):", "Once upon a time, in a small village by the sea, there lived"}) {
    absl::StatusOr<ReferenceOutput> ref = ReferenceGenerate(prompt, 10);
    ASSERT_TRUE(ref.ok()) << ref.status();
    StreamResult got = Generate(c->generation(), GreedyRequest(prompt, 10));
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.token_ids, ref->token_ids) << prompt;
    EXPECT_EQ(got.complete->usage().prompt_tokens(), ref->prompt_tokens);
    EXPECT_EQ(got.complete->usage().completion_tokens(), static_cast<int>(got.token_ids.size()));
    EXPECT_EQ(got.complete->decode_node(), "mixed-0");
  }
  // The mixed node's prefix-cache hits reach the client's usage.
  const std::string long_prompt =
      "You are a careful assistant. Answer in one sentence. Question: why is the sky blue? "
      "Think about how sunlight scatters in the atmosphere before you answer. Answer:";
  StreamResult cold = Generate(c->generation(), GreedyRequest(long_prompt, 4));
  StreamResult warm = Generate(c->generation(), GreedyRequest(long_prompt, 4));
  ASSERT_TRUE(cold.status.ok() && warm.status.ok());
  EXPECT_EQ(cold.complete->usage().cached_prompt_tokens(), 0);
  EXPECT_GE(warm.complete->usage().cached_prompt_tokens(), 32);
  EXPECT_EQ(warm.token_ids, cold.token_ids);
  v1::GenerateRequest r = GreedyRequest("Tell me a long story.", 300);
  r.mutable_stop()->set_ignore_eos(true);
  int chunks = 0;
  StreamResult cancelled =
      Generate(c->generation(), r, absl::Seconds(120),
               [&](const v1::GenerateResponse& ev) { return !(ev.has_chunk() && ++chunks >= 3); });
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(c->WaitForIdleKv("mixed-0", absl::Seconds(30)));
}

// n > 1 over gRPC: each sample's tokens and its own finish, by chunk index.
struct SampleStreams {
  std::map<int32_t, int> tokens;
  std::map<int32_t, v1::FinishReason> finish;
  int chunks = 0;
  std::function<bool(const v1::GenerateResponse&)> Observer(int cancel_after = 0) {
    return [this, cancel_after](const v1::GenerateResponse& ev) {
      if (!ev.has_chunk()) return true;
      tokens[ev.chunk().index()] += ev.chunk().token_ids_size();
      if (ev.chunk().finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        finish[ev.chunk().index()] = ev.chunk().finish_reason();
      }
      return cancel_after == 0 || ++chunks < cancel_after;
    };
  }
};

v1::GenerateRequest SampledRequest(const std::string& prompt, int max_tokens, int n) {
  v1::GenerateRequest r = GreedyRequest(prompt, max_tokens);
  r.mutable_sampling()->set_temperature(1.0f);
  r.mutable_sampling()->set_seed(5);
  r.mutable_sampling()->set_n(n);
  r.mutable_stop()->set_ignore_eos(true);
  return r;
}

// Colocated: one engine prefills once and forks the samples at token #1;
// each ends on its own, usage sums them, and cancelling frees every sample.
TEST(ClusterFaultTest, MixedNodeServesSamplesAndFreesThemOnCancel) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.n_mixed = 1;
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);
  SampleStreams s;
  StreamResult got = Generate(c->generation(), SampledRequest("Tell me a story.", 12, 3),
                              absl::Seconds(120), s.Observer());
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(s.tokens, (std::map<int32_t, int>{{0, 12}, {1, 12}, {2, 12}}));
  EXPECT_EQ(s.finish.size(), 3u);
  for (const auto& [i, f] : s.finish) EXPECT_EQ(f, v1::FINISH_REASON_LENGTH) << i;
  ASSERT_TRUE(got.complete.has_value());
  EXPECT_EQ(got.complete->usage().completion_tokens(), 36);
  SampleStreams cancelled;
  StreamResult gone = Generate(c->generation(), SampledRequest("Tell me a long story.", 300, 3),
                               absl::Seconds(120), cancelled.Observer(6));
  EXPECT_EQ(gone.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(c->WaitForIdleKv("mixed-0", absl::Seconds(30)));
}

// A request with n > 1 whose decode node dies after its first tokens is not
// migrated (its samples cannot be resumed token-exactly as one request): it
// fails with an error that says so, and the surviving nodes hold nothing.
TEST(ClusterFaultTest, SamplesAreNotMigratedAfterTheirFirstTokens) {
  REQUIRE_MODEL();
  ClusterOptions o;
  o.n_decode = 2;
  std::unique_ptr<Cluster> c = StartOrFail(o);
  ASSERT_NE(c, nullptr);
  SampleStreams s;
  std::string victim;
  StreamResult got =
      Generate(c->generation(), SampledRequest("Tell me a long story.", 400, 2), absl::Seconds(120),
               [&](const v1::GenerateResponse& ev) {
                 s.Observer()(ev);
                 if (ev.has_chunk() && ++s.chunks == 4) {
                   // A node publishes its load at the end of a step, after it
                   // streamed the step's tokens: the holder may still say awaiting_kv.
                   for (const std::string id : {"decode-0", "decode-1"}) {
                     absl::StatusOr<v1::NodeLoad> load = c->GetLoad(id);
                     if (load.ok() && load->running() + load->waiting() + load->awaiting_kv() > 0) {
                       victim = id;
                     }
                   }
                   if (!victim.empty()) c->node_process(victim).Signal(SIGKILL);
                 }
                 return true;
               });
  ASSERT_FALSE(victim.empty()) << "no decode node held the request";
  const std::string message =
      got.error.has_value() ? got.error->message() : got.status.error_message();
  EXPECT_FALSE(got.complete.has_value());
  EXPECT_THAT(message, HasSubstr("not migrated")) << c->Logs();
  EXPECT_TRUE(c->WaitForIdleKv("prefill-0", absl::Seconds(30)));
  const std::string other = victim == "decode-0" ? "decode-1" : "decode-0";
  EXPECT_TRUE(c->WaitForIdleKv(other, absl::Seconds(30)));
}

}  // namespace
}  // namespace pdserve::itest
