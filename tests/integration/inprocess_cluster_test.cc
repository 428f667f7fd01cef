// The cluster scenarios of cluster_test.cc and cluster_fault_test.cc in ONE
// process, in milliseconds: a RouterServer, prefill and decode NodeServers
// (their code unchanged) and a tiny random-weight model (dummy_model.h;
// same seed, same bytes, so every run is the same). The router reaches its
// nodes through its NodeClient seam (router/node_client.h, gRPC over
// loopback TCP); KV moves over the in-process loopback transport
// (NodeOptions::kv_loopback), or over TCP on ephemeral ports where a test
// asks (greedy parity runs on both). Every port is ephemeral (port 0). The multi-process tests stay
// as the end-to-end layer (real binaries, signals, the downloaded model).
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/dummy_model.h"
#include "engine/model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/node_server.h"
#include "router/router_server.h"
#include "tests/integration/cluster_harness.h"

namespace pdserve {
namespace {

using itest::Generate;
using itest::StreamResult;
using ::testing::HasSubstr;

// Tiny model: 2 layers, 64 wide, byte-level vocabulary (the router
// tokenizes with it too). Written once per process.
const std::string& ModelPath() {
  static const std::string* path = [] {
    DummyModelSpec spec;
    spec.n_ctx = 512;
    absl::StatusOr<std::string> bytes = BuildDummyModelGguf(spec);
    if (!bytes.ok()) return new std::string();
    auto* p = new std::string(absl::StrCat(::testing::TempDir(), "/inprocess-", getpid(), ".gguf"));
    std::ofstream(*p, std::ios::binary) << *bytes;
    return p;
  }();
  return *path;
}

struct ClusterSpec {
  int prefill = 1;
  int decode = 1;
  int64_t kv_deadline_ms = 10000;
  int64_t decode_kv_cache_bytes = 4 << 20;
  int32_t max_queue = 256;
  int64_t queue_timeout_ms = 20000;
  bool kv_over_tcp = false;  // default: the in-process loopback transport
};

// Router + nodes in this process; tears down in reverse.
class InProcessCluster {
 public:
  static std::unique_ptr<InProcessCluster> Start(const ClusterSpec& spec) {
    auto c = std::unique_ptr<InProcessCluster>(new InProcessCluster());
    router::RouterOptions ro;
    ro.model_path = ModelPath();
    ro.listen = "127.0.0.1:0";
    ro.metrics_port = 0;
    ro.heartbeat_interval_ms = 100;
    ro.node_expiry_ms = 60000;
    ro.config.kv_deadline_ms = spec.kv_deadline_ms;
    ro.config.max_queue = spec.max_queue;
    ro.config.queue_timeout_ms = spec.queue_timeout_ms;
    absl::StatusOr<std::unique_ptr<router::RouterServer>> r = router::RouterServer::Start(ro);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return nullptr;
    c->router_ = std::move(*r);
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(ModelPath());
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return nullptr;
    c->model_ = std::shared_ptr<const Model>(std::move(*model));
    for (int i = 0; i < spec.prefill + spec.decode; ++i) {
      const bool prefill = i < spec.prefill;
      node::NodeOptions o;
      o.role = prefill ? node::NodeRole::kPrefill : node::NodeRole::kDecode;
      o.node_id = prefill ? absl::StrCat("prefill-", i) : absl::StrCat("decode-", i - spec.prefill);
      o.listen = "127.0.0.1:0";
      o.kv_transport = "tcp";
      if (!spec.kv_over_tcp) o.kv_loopback = &c->kv_network_;
      o.router = absl::StrCat("127.0.0.1:", c->router_->port());
      o.engine.n_threads = 1;
      o.engine.kv_cache_bytes = prefill ? (4 << 20) : spec.decode_kv_cache_bytes;
      absl::StatusOr<std::unique_ptr<Model>> own = Model::Load(ModelPath());
      EXPECT_TRUE(own.ok()) << own.status();
      if (!own.ok()) return nullptr;
      absl::StatusOr<std::unique_ptr<node::NodeServer>> n =
          node::NodeServer::Start(o, std::shared_ptr<const Model>(std::move(*own)));
      EXPECT_TRUE(n.ok()) << n.status();
      if (!n.ok()) return nullptr;
      c->nodes_.push_back(std::move(*n));
    }
    // Registered: every node is in the router's registry.
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (c->router_->registry().size() < c->nodes_.size()) {
      if (absl::Now() > deadline) {
        ADD_FAILURE() << "nodes did not register";
        return nullptr;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    c->channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", c->router_->port()),
                                      grpc::InsecureChannelCredentials());
    c->generation_ = v1::Generation::NewStub(c->channel_);
    return c;
  }

  ~InProcessCluster() {
    for (auto& n : nodes_) {
      if (n) n->Shutdown(absl::ZeroDuration());
    }
    nodes_.clear();
    if (router_) router_->Shutdown(absl::ZeroDuration());
  }

  v1::Generation::Stub& generation() { return *generation_; }
  router::RouterServer& router() { return *router_; }
  node::NodeServer* node(const std::string& id) {
    for (auto& n : nodes_) {
      if (n && n->id() == id) return n.get();
    }
    return nullptr;
  }
  // Shuts the node down (it deregisters; its streams end) and frees it.
  void Drop(const std::string& id) {
    for (auto& n : nodes_) {
      if (n && n->id() == id) {
        n->Shutdown(absl::ZeroDuration());
        n.reset();
      }
    }
  }
  // Every block free (prefix-cached ones count as free), nothing queued,
  // nothing promised: a request still in the engine's inbox (submitted, not
  // yet run, its Abort behind it) holds a commitment, and the node must not
  // be torn down under it (LSan saw the prefill call of such a request).
  bool WaitForIdleKv(const std::string& id, absl::Duration timeout = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      const v1::NodeLoad l = node(id)->Load();
      if (l.free_kv_blocks() == l.total_kv_blocks() &&
          l.running() + l.waiting() + l.awaiting_kv() == 0 && l.committed_kv_blocks() == 0) {
        return true;
      }
      if (absl::Now() > deadline) {
        ADD_FAILURE() << id << " KV not idle: " << l.ShortDebugString();
        return false;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
  }
  // The router holds no capacity for finished requests on any node.
  bool WaitForRouterIdle(absl::Duration timeout = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      bool idle = router_->tracked_calls() == 0;
      for (const router::NodeView& v : router_->registry().Snapshot()) {
        idle = idle && v.reserved_blocks == 0 && v.inflight_prefill_tokens == 0 &&
               v.inflight_requests == 0;
      }
      if (idle) return true;
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
  }

 private:
  InProcessCluster() = default;
  transport::LoopbackNetwork kv_network_;  // outlives the nodes (declared first)
  std::unique_ptr<router::RouterServer> router_;
  std::shared_ptr<const Model> model_;
  std::vector<std::unique_ptr<node::NodeServer>> nodes_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> generation_;
};

v1::GenerateRequest Greedy(const std::string& prompt, int max_tokens) {
  v1::GenerateRequest r = itest::GreedyRequest(prompt, max_tokens);
  r.mutable_stop()->set_ignore_eos(true);  // random weights: run to max_tokens
  return r;
}

// The same request on one mixed node (one engine, no transfer, no router).
std::vector<int32_t> SingleEngine(const std::shared_ptr<const Model>& model,
                                  const std::vector<int32_t>& prompt, int max_tokens) {
  node::NodeOptions o;
  o.role = node::NodeRole::kMixed;
  o.node_id = "reference";
  o.listen = "127.0.0.1:0";
  o.engine.n_threads = 1;
  o.engine.kv_cache_bytes = 4 << 20;
  absl::StatusOr<std::unique_ptr<node::NodeServer>> n = node::NodeServer::Start(o, model);
  EXPECT_TRUE(n.ok()) << n.status();
  if (!n.ok()) return {};
  auto stub = v1::Node::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*n)->port()),
                                                    grpc::InsecureChannelCredentials()));
  v1::NodeRequest req;
  req.set_request_id("reference");
  for (int32_t t : prompt) req.add_prompt(t);
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stop()->set_max_tokens(max_tokens);
  req.mutable_stop()->set_ignore_eos(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto reader = stub->Generate(&ctx, req);
  std::vector<int32_t> out;
  v1::DecodeEvent ev;
  while (reader->Read(&ev)) {
    if (ev.has_chunk())
      out.insert(out.end(), ev.chunk().token_ids().begin(), ev.chunk().token_ids().end());
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  (*n)->Shutdown(absl::ZeroDuration());
  return out;
}

class InProcessClusterKvTest : public ::testing::TestWithParam<bool> {};

TEST_P(InProcessClusterKvTest, GreedyOutputMatchesASingleEngine) {
  ClusterSpec spec;
  spec.kv_over_tcp = GetParam();
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start(spec);
  ASSERT_NE(c, nullptr);
  EXPECT_THAT(c->node("decode-0")->kv_endpoint(),
              ::testing::StartsWith(GetParam() ? "127.0.0.1:" : "loopback:"));
  std::shared_ptr<const Model> model(Model::Load(ModelPath()).value());
  // Prompts shorter than a block, across block boundaries, and long enough
  // for several KV blocks; token ids, so the reference sees the same prompt.
  for (int n_prompt : {3, 12, 40, 100}) {
    std::vector<int32_t> prompt;
    for (int i = 0; i < n_prompt; ++i) prompt.push_back(40 + (i * 7) % 90);
    v1::GenerateRequest req;
    for (int32_t t : prompt) req.mutable_token_ids()->add_ids(t);
    req.mutable_sampling()->set_temperature(0);
    req.mutable_stop()->set_max_tokens(16);
    req.mutable_stop()->set_ignore_eos(true);
    StreamResult got = Generate(c->generation(), req, absl::Seconds(30));
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    ASSERT_EQ(got.token_ids.size(), 16u);
    EXPECT_EQ(got.token_ids, SingleEngine(model, prompt, 16)) << n_prompt << " prompt tokens";
    ASSERT_TRUE(got.complete.has_value());
    EXPECT_EQ(got.complete->usage().completion_tokens(), 16);
    EXPECT_EQ(got.complete->usage().prompt_tokens(), n_prompt);
  }
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
  EXPECT_TRUE(c->WaitForRouterIdle());
}

INSTANTIATE_TEST_SUITE_P(Transports, InProcessClusterKvTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Tcp" : "Loopback";
                         });

TEST(InProcessClusterTest, ConcurrentStreamsAllCompleteWithCorrectUsage) {
  ClusterSpec spec;
  spec.decode = 2;
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start(spec);
  ASSERT_NE(c, nullptr);
  constexpr int kStreams = 16;
  std::vector<StreamResult> results(kStreams);
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([&, i] {
      results[i] = Generate(c->generation(), Greedy(absl::StrCat("Request number ", i), 8 + i % 5),
                            absl::Seconds(30));
    });
  }
  for (std::thread& t : clients) t.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].token_ids.size(), static_cast<size_t>(8 + i % 5)) << i;
    ASSERT_TRUE(results[i].complete.has_value()) << i;
    EXPECT_EQ(results[i].complete->usage().completion_tokens(), 8 + i % 5) << i;
  }
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
  EXPECT_TRUE(c->WaitForIdleKv("decode-1"));
  EXPECT_TRUE(c->WaitForRouterIdle());
}

TEST(InProcessClusterTest, StageTimingsArePresentOrderedAndWithinTheClientLatency) {
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start({});
  ASSERT_NE(c, nullptr);
  StreamResult got = Generate(c->generation(), Greedy("The capital of France is", 8));
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  ASSERT_TRUE(got.complete.has_value());
  const v1::Timings& t = got.complete->timings();
  std::vector<std::string> names;
  for (const v1::StageTiming& s : t.stages()) {
    names.push_back(s.stage());
    EXPECT_GE(s.start_ns(), 0) << s.stage();
    EXPECT_GE(s.duration_ns(), 0) << s.stage();
    EXPECT_LE(s.start_ns() + s.duration_ns(), t.e2e_ns()) << s.stage();
    EXPECT_FALSE(s.node().empty()) << s.stage();
  }
  for (const char* stage :
       {"router.tokenize", "router.queue", "prefill.queue", "prefill.compute", "kv.transfer",
        "decode.wait_kv", "decode.queue", "decode.first_step", "decode.generate"}) {
    EXPECT_THAT(names, ::testing::Contains(stage)) << ::testing::PrintToString(names);
  }
  // In the order they happened.
  auto start = [&](const std::string& name) {
    for (const v1::StageTiming& s : t.stages()) {
      if (s.stage() == name) return s.start_ns();
    }
    return int64_t{-1};
  };
  // In the order they happened on each process (each node's stages count
  // from when the router sent it its RPC: across nodes the offsets are
  // approximate, so only the router's before the nodes').
  EXPECT_LE(start("router.tokenize"), start("router.queue"));
  EXPECT_LE(start("router.queue"), start("prefill.queue"));
  EXPECT_LE(start("router.queue"), start("decode.wait_kv"));
  EXPECT_LE(start("prefill.queue"), start("prefill.compute"));
  EXPECT_LE(start("decode.wait_kv"), start("decode.queue"));
  EXPECT_LE(start("decode.queue"), start("decode.first_step"));
  EXPECT_LE(start("decode.first_step"), start("decode.generate"));
  EXPECT_GT(t.ttft_ns(), 0);
  EXPECT_LE(t.ttft_ns(), t.e2e_ns());
  EXPECT_LE(t.e2e_ns(), got.client_e2e_ns);
}

TEST(InProcessClusterTest, CancelWhileQueuedDuringPrefillAndDuringDecodeFreesEverything) {
  ClusterSpec spec;
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start(spec);
  ASSERT_NE(c, nullptr);
  // During decode: after the first streamed tokens.
  StreamResult mid = Generate(c->generation(), Greedy("Once upon a time", 200), absl::Seconds(30),
                              [](const v1::GenerateResponse& r) { return !r.has_chunk(); });
  EXPECT_EQ(mid.status.error_code(), grpc::StatusCode::CANCELLED) << mid.status.error_message();
  EXPECT_GE(mid.token_ids.size(), 1u);
  EXPECT_LT(mid.token_ids.size(), 200u);
  // At once (queued, or while the prefill node computes a long prompt, or
  // while its KV travels): whichever stage the cancel meets.
  std::string long_prompt;
  for (int i = 0; i < 12; ++i) absl::StrAppend(&long_prompt, "The quick brown fox jumps. ");
  for (int delay_us : {0, 200, 1000, 3000, 10000}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    std::thread canceller([&ctx, delay_us] {
      absl::SleepFor(absl::Microseconds(delay_us));
      ctx.TryCancel();
    });
    StreamResult r =
        Generate(c->generation(), Greedy(long_prompt, 64), absl::Seconds(30), nullptr, &ctx);
    canceller.join();
    EXPECT_TRUE(r.status.error_code() == grpc::StatusCode::CANCELLED || r.status.ok())
        << r.status.error_message();
  }
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
  EXPECT_TRUE(c->WaitForIdleKv("prefill-0"));
  EXPECT_TRUE(c->WaitForRouterIdle());
  // The pair still serves.
  StreamResult after = Generate(c->generation(), Greedy("Hello", 4));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.token_ids.size(), 4u);
}

TEST(InProcessClusterTest, TinyKvDeadlineFailsExplicitlyAndFreesBlocks) {
  ClusterSpec spec;
  spec.kv_deadline_ms = 1;
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start(spec);
  ASSERT_NE(c, nullptr);
  std::string prompt;
  for (int i = 0; i < 12; ++i) absl::StrAppend(&prompt, "The quick brown fox jumps. ");
  // The prefill engine is held so the 1 ms budget surely passes before any
  // layer is given (on a fast CPU the whole transfer fits in 1 ms); it runs
  // again once the call has ended, or after 2 s should the call wait for it.
  c->node("prefill-0")->engine().SetPausedForTest(true);
  absl::Notification ended;
  std::thread resume([&] {
    ended.WaitForNotificationWithTimeout(absl::Seconds(2));
    c->node("prefill-0")->engine().SetPausedForTest(false);
  });
  StreamResult got = Generate(c->generation(), Greedy(prompt, 8), absl::Seconds(30));
  ended.Notify();
  resume.join();
  EXPECT_EQ(got.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << got.status.error_message();
  EXPECT_THAT(got.status.error_message(), HasSubstr("KV transfer"));
  EXPECT_FALSE(got.complete.has_value());
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
  EXPECT_TRUE(c->WaitForIdleKv("prefill-0"));
  EXPECT_TRUE(c->WaitForRouterIdle());
}

// One stream holding all but about one of the decode node's KV blocks, its
// engine paused so the holder cannot finish (and free its blocks) while a
// test asks for more: on a fast CPU the tiny model generates all its tokens
// in a few milliseconds. Token #1 still reaches the client (the prefill node
// makes it); Start returns once it has. Release cancels the stream, resumes
// the engine and waits for the holder.
class DecodeKvHolder {
 public:
  explicit DecodeKvHolder(InProcessCluster* c) : c_(c) {}
  ~DecodeKvHolder() { Release(); }

  bool Start() {
    const int32_t total = c_->node("decode-0")->Load().total_kv_blocks();
    if (total <= 2) return false;
    c_->node("decode-0")->engine().SetPausedForTest(true);
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    thread_ = std::thread([this, total] {
      Generate(
          c_->generation(), Greedy("Hi", (total - 1) * 16 - 8), absl::Seconds(30),
          [this](const v1::GenerateResponse& r) {
            if (r.has_chunk() && !streaming_.HasBeenNotified()) streaming_.Notify();
            return true;
          },
          &ctx_);
    });
    return streaming_.WaitForNotificationWithTimeout(absl::Seconds(20));
  }

  void Release() {
    if (!thread_.joinable()) return;
    ctx_.TryCancel();
    c_->node("decode-0")->engine().SetPausedForTest(false);
    thread_.join();
  }

 private:
  InProcessCluster* c_;
  grpc::ClientContext ctx_;
  absl::Notification streaming_;
  std::thread thread_;
};

TEST(InProcessClusterTest, FullDecodeKvRefusesThenRecovers) {
  ClusterSpec spec;
  spec.max_queue = 0;  // what does not fit now is refused
  spec.decode_kv_cache_bytes = 64 << 10;
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start(spec);
  ASSERT_NE(c, nullptr);
  const int32_t total = c->node("decode-0")->Load().total_kv_blocks();
  // One stream holds most of the cache while the next asks for more.
  DecodeKvHolder holder(c.get());
  ASSERT_TRUE(holder.Start());
  StreamResult refused = Generate(c->generation(), Greedy("Hello there", 32));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.status.error_message();
  holder.Release();
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
  EXPECT_TRUE(c->WaitForRouterIdle());
  // Recovery: the same request fits now.
  StreamResult after = Generate(c->generation(), Greedy("Hello there", 32));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  // Larger than the whole cache: never fits.
  StreamResult never = Generate(c->generation(), Greedy("Hi", total * 16 + 16));
  EXPECT_EQ(never.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << never.status.error_message();
}

// The router's pdserve:num_requests_waiting is its dispatch queue, read when
// scraped: a request waiting for decode KV shows, and leaves when its client
// cancels (no count kept beside the queue to drift).
TEST(InProcessClusterTest, WaitingGaugeIsTheDispatchQueue) {
  ClusterSpec spec;
  spec.decode_kv_cache_bytes = 64 << 10;
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start(spec);
  ASSERT_NE(c, nullptr);
  auto waiting = [&] {
    return itest::Metric(itest::HttpGet(c->router().metrics_port(), "/metrics"),
                         "pdserve:num_requests_waiting");
  };
  auto wait_for = [&](double want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (waiting() != want && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
    return waiting();
  };
  EXPECT_EQ(waiting(), 0);
  // A paused decode node holding most of its cache for one stream.
  DecodeKvHolder holder(c.get());
  ASSERT_TRUE(holder.Start());
  // The next request waits for capacity in the router's queue.
  grpc::ClientContext queued_ctx;
  queued_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  StreamResult queued;
  std::thread waiter([&] {
    queued = Generate(c->generation(), Greedy("Hello there", 32), absl::Seconds(30), nullptr,
                      &queued_ctx);
  });
  EXPECT_EQ(wait_for(1), 1);
  queued_ctx.TryCancel();
  waiter.join();
  EXPECT_EQ(queued.status.error_code(), grpc::StatusCode::CANCELLED)
      << queued.status.error_message();
  EXPECT_EQ(wait_for(0), 0);
  holder.Release();
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
  EXPECT_TRUE(c->WaitForRouterIdle());
}

TEST(InProcessClusterTest, DroppedDecodeNodeLeavesTrafficOnTheOther) {
  ClusterSpec spec;
  spec.decode = 2;
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start(spec);
  ASSERT_NE(c, nullptr);
  c->Drop("decode-0");
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (c->router().registry().Has("decode-0") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_FALSE(c->router().registry().Has("decode-0"));
  for (int i = 0; i < 3; ++i) {
    StreamResult got = Generate(c->generation(), Greedy("Hello", 4));
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    ASSERT_TRUE(got.complete.has_value());
    EXPECT_EQ(got.complete->decode_node(), "decode-1");
  }
  EXPECT_TRUE(c->WaitForIdleKv("decode-1"));
  EXPECT_TRUE(c->WaitForRouterIdle());
}

// A prefill whose KV no decode node takes (the router cancelled Admit
// before it reached the decode node): the Prefill call has replied, the
// transfer waits for a Post that never comes. The router's Abort by
// transfer id stops it and frees the blocks now, not at the KV deadline.
TEST(InProcessClusterTest, AbortByTransferIdFreesAPrefillWhoseKvNobodyTakes) {
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start({});
  ASSERT_NE(c, nullptr);
  auto stub = v1::Node::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", c->node("prefill-0")->port()),
                          grpc::InsecureChannelCredentials()));
  v1::PrefillRequest req;
  req.mutable_request()->set_request_id("orphan");
  for (int i = 0; i < 40; ++i) req.mutable_request()->add_prompt(40 + i);
  req.mutable_request()->mutable_sampling()->set_temperature(0);
  req.mutable_request()->mutable_stop()->set_max_tokens(8);
  req.set_kv_endpoint(c->node("decode-0")->kv_endpoint());
  req.set_transfer_id(0x5eed);
  req.set_kv_secret(std::string(16, 'k'));
  req.set_kv_deadline_ms(30000);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::PrefillResponse resp;
    grpc::Status s = stub->Prefill(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();  // token #1, KV still waiting
  }
  v1::NodeLoad held = c->node("prefill-0")->Load();
  EXPECT_LT(held.free_kv_blocks(), held.total_kv_blocks());
  auto abort = [&](const std::string& id, uint64_t xfer) {
    v1::NodeAbortRequest a;
    a.set_request_id(id);
    a.set_transfer_id(xfer);
    v1::NodeAbortResponse r;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status s = stub->Abort(&ctx, a, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return r.found();
  };
  // Another request's id, or another transfer: nothing happens.
  EXPECT_FALSE(abort("someone-else", 0x5eed));
  EXPECT_FALSE(abort("orphan", 0x5eee));
  EXPECT_EQ(c->node("prefill-0")->Load().free_kv_blocks(), held.free_kv_blocks());
  EXPECT_TRUE(abort("orphan", 0x5eed));
  EXPECT_TRUE(c->WaitForIdleKv("prefill-0", absl::Seconds(2)));
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
}

// Admit calls cancelled at different points of their life (before the
// handler runs, after it posted): the decode node frees every block now, not
// at the KV deadline (30 s here), and still serves. The narrow window while
// the handler reserves and posts (fixed in a3523e5) did not show here: this
// passed 20 of 20 runs without that fix too.
TEST(InProcessClusterTest, AdmitsCancelledAtAnyPointFreeTheirBlocks) {
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start({});
  ASSERT_NE(c, nullptr);
  auto stub = v1::Node::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", c->node("decode-0")->port()), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 60; ++i) {
    v1::AdmitRequest req;
    req.mutable_request()->set_request_id(absl::StrCat("admit-", i));
    for (int t = 0; t < 40; ++t) req.mutable_request()->add_prompt(40 + t);
    req.mutable_request()->mutable_sampling()->set_temperature(0);
    req.mutable_request()->mutable_stop()->set_max_tokens(8);
    req.set_transfer_id(1000 + i);
    req.set_kv_secret(std::string(16, 's'));
    req.set_kv_deadline_ms(30000);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    std::unique_ptr<grpc::ClientReader<v1::DecodeEvent>> reader = stub->Admit(&ctx, req);
    absl::SleepFor(absl::Microseconds((i % 12) * 50));  // 0 to 550 us
    ctx.TryCancel();
    v1::DecodeEvent ev;
    while (reader->Read(&ev)) {
    }
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
  }
  EXPECT_TRUE(c->WaitForIdleKv("decode-0", absl::Seconds(3)));
  StreamResult after = Generate(c->generation(), Greedy("Hello", 4));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

// Prefill calls cancelled at different points of their life (while the
// transfer opens, while the request is submitted, while it waits in the
// engine): the prefill node frees every block and forgets every promise
// now, not at the KV deadline (30 s here). The engine is paused so token #1
// never beats the cancel, then runs the aborts it was sent.
TEST(InProcessClusterTest, PrefillsCancelledAtAnyPointFreeTheirBlocks) {
  std::unique_ptr<InProcessCluster> c = InProcessCluster::Start({});
  ASSERT_NE(c, nullptr);
  auto stub = v1::Node::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", c->node("prefill-0")->port()),
                          grpc::InsecureChannelCredentials()));
  c->node("prefill-0")->engine().SetPausedForTest(true);
  for (int i = 0; i < 40; ++i) {
    v1::PrefillRequest req;
    req.mutable_request()->set_request_id(absl::StrCat("prefill-", i));
    for (int t = 0; t < 40; ++t) req.mutable_request()->add_prompt(40 + t);
    req.mutable_request()->mutable_sampling()->set_temperature(0);
    req.mutable_request()->mutable_stop()->set_max_tokens(8);
    req.set_kv_endpoint(c->node("decode-0")->kv_endpoint());
    req.set_transfer_id(2000 + i);
    req.set_kv_secret(std::string(16, 'p'));
    req.set_kv_deadline_ms(30000);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::PrefillResponse resp;
    absl::Notification replied;
    grpc::Status s;
    stub->async()->Prefill(&ctx, &req, &resp, [&](grpc::Status st) {
      s = std::move(st);
      replied.Notify();
    });
    absl::SleepFor(absl::Microseconds((i % 8) * 100));  // 0 to 700 us
    ctx.TryCancel();
    ASSERT_TRUE(replied.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
  }
  c->node("prefill-0")->engine().SetPausedForTest(false);
  EXPECT_TRUE(c->WaitForIdleKv("prefill-0", absl::Seconds(3)));
  StreamResult after = Generate(c->generation(), Greedy("Hello", 4));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_TRUE(c->WaitForIdleKv("decode-0"));
}

// Nodes that do not register: the router polls them (GetInfo, GetLoad
// through its NodeClient) and serves with them.
TEST(InProcessClusterTest, StaticNodesArePolledAndServe) {
  std::shared_ptr<const Model> model(Model::Load(ModelPath()).value());
  std::vector<std::unique_ptr<node::NodeServer>> nodes;
  router::RouterOptions ro;
  for (node::NodeRole role : {node::NodeRole::kPrefill, node::NodeRole::kDecode}) {
    node::NodeOptions o;
    o.role = role;
    o.listen = "127.0.0.1:0";
    o.kv_transport = "tcp";
    o.engine.n_threads = 1;
    o.engine.kv_cache_bytes = 4 << 20;
    absl::StatusOr<std::unique_ptr<node::NodeServer>> n = node::NodeServer::Start(o, model);
    ASSERT_TRUE(n.ok()) << n.status();
    ro.static_nodes.push_back((*n)->address());
    nodes.push_back(std::move(*n));
  }
  ro.model_path = ModelPath();
  ro.listen = "127.0.0.1:0";
  ro.heartbeat_interval_ms = 100;  // polled every 50 ms
  absl::StatusOr<std::unique_ptr<router::RouterServer>> r = router::RouterServer::Start(ro);
  ASSERT_TRUE(r.ok()) << r.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*r)->registry().size() < 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ((*r)->registry().size(), 2u);
  auto generation = v1::Generation::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*r)->port()), grpc::InsecureChannelCredentials()));
  StreamResult got = Generate(*generation, Greedy("Hello", 4), absl::Seconds(30));
  EXPECT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.token_ids.size(), 4u);
  (*r)->Shutdown(absl::ZeroDuration());
  for (auto& n : nodes) n->Shutdown(absl::ZeroDuration());
}

}  // namespace
}  // namespace pdserve
