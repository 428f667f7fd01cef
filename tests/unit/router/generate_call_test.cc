// The router's GenerateCall against scripted nodes (FakeNodeClient): a node
// that fails at a chosen stage (refused, UNAVAILABLE mid-stream, a deadline,
// RESOURCE_EXHAUSTED on admit), client cancels at every stage, and the
// capacity each dispatch reserved coming back exactly once (Placement)
// whatever happened. No network, no model: token ids in, token ids out.
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/dispatcher.h"
#include "router/generate_call.h"
#include "router/node_registry.h"
#include "router/placement.h"
#include "router/selection_policy.h"
#include "tests/unit/router/fake_node_client.h"
#include "tracing/metrics.h"

namespace pdserve::router {
namespace {

using ::testing::ElementsAre;
using testing::FakeNodeCall;
using testing::FakeNodeClient;
using ::testing::HasSubstr;
using Kind = FakeNodeCall::Kind;

constexpr int32_t kBlockSize = 16;
constexpr int32_t kTotalBlocks = 1000;
// Held on every node for the whole test: a release of more than a call
// reserved shows as less than this, a missing release as more.
constexpr int32_t kBackgroundBlocks = 100;
constexpr int64_t kBackgroundTokens = 1000;

// The client's side of one call.
class RecordingSink : public ResponseSink {
 public:
  bool Write(v1::GenerateResponse response) override {
    absl::MutexLock lock(&mu_);
    responses_.push_back(std::move(response));
    return true;
  }
  void Finish(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    ++finishes_;
    status_ = status;
  }
  // The final status, once Finish ran (within `timeout`).
  std::optional<grpc::Status> Wait(absl::Duration timeout = absl::Seconds(5)) {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finishes_ > 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) return std::nullopt;
    return status_;
  }
  std::vector<int32_t> tokens() {
    absl::MutexLock lock(&mu_);
    std::vector<int32_t> out;
    for (const auto& r : responses_) {
      if (r.has_chunk())
        out.insert(out.end(), r.chunk().token_ids().begin(), r.chunk().token_ids().end());
    }
    return out;
  }
  std::optional<v1::Complete> complete() {
    absl::MutexLock lock(&mu_);
    for (const auto& r : responses_) {
      if (r.has_complete()) return r.complete();
    }
    return std::nullopt;
  }
  int finishes() {
    absl::MutexLock lock(&mu_);
    return finishes_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::GenerateResponse> responses_ ABSL_GUARDED_BY(mu_);
  int finishes_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

v1::DecodeEvent Admitted() {
  v1::DecodeEvent ev;
  ev.mutable_admitted()->set_blocks(1);
  return ev;
}
v1::DecodeEvent Chunk(std::vector<int32_t> ids) {
  v1::DecodeEvent ev;
  for (int32_t id : ids) ev.mutable_chunk()->add_token_ids(id);
  return ev;
}
v1::DecodeEvent Done(v1::FinishReason reason, int32_t completion_tokens) {
  v1::DecodeEvent ev;
  ev.mutable_complete()->set_finish_reason(reason);
  ev.mutable_complete()->mutable_usage()->set_completion_tokens(completion_tokens);
  v1::StageTiming* t = ev.mutable_complete()->mutable_timings()->add_stages();
  t->set_stage("decode.generate");
  t->set_start_ns(1000);
  t->set_duration_ns(2000);
  return ev;
}
v1::PrefillResponse FirstToken(int32_t id) {
  v1::PrefillResponse r;
  r.set_token_id(id);
  v1::StageTiming* t = r.add_stages();
  t->set_stage("prefill.compute");
  t->set_start_ns(100);
  t->set_duration_ns(500);
  return r;
}

// A router (registry, dispatcher, context) whose nodes are fakes.
class RouterFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<tracing::PdserveMetrics> m =
        tracing::PdserveMetrics::Register(metrics_registry_);
    ASSERT_TRUE(m.ok()) << m.status();
    ctx_.metrics = *m;
    ctx_.prompt.limits.n_ctx = 2048;
    ctx_.prompt.limits.n_vocab = 1000;
    ctx_.config.max_retries = 2;
    ctx_.config.kv_deadline_ms = 5000;
    registry_.SetClientFactory([this](const std::string& address) { return nodes_.at(address); });
    ctx_.registry = &registry_;
    timing_log_ = std::tmpfile();
    ctx_.timing_log = timing_log_;
    dispatcher_ = std::make_unique<Dispatcher>(&ctx_, std::make_unique<LeastLoadedPolicy>());
    ctx_.dispatcher = dispatcher_.get();
    Dispatcher* d = dispatcher_.get();
    registry_.SetOnChange([d] { d->Pump(); });
  }
  void TearDown() override {
    background_.clear();
    dispatcher_.reset();
    if (timing_log_ != nullptr) std::fclose(timing_log_);
  }

  std::shared_ptr<FakeNodeClient> AddNode(const std::string& id, v1::NodeRole role) {
    auto node = std::make_shared<FakeNodeClient>();
    nodes_[id] = node;
    v1::NodeInfo info;
    info.set_node_id(id);
    info.set_role(role);
    info.set_address(id);
    if (role == v1::NODE_ROLE_DECODE) info.set_kv_endpoint("kv-" + id);
    info.set_block_size(kBlockSize);
    info.set_model_fingerprint("m");
    v1::NodeLoad load;
    load.set_total_kv_blocks(kTotalBlocks);
    load.set_free_kv_blocks(kTotalBlocks);
    EXPECT_TRUE(registry_.Register(info, load).ok());
    // The background reservation (see kBackgroundBlocks).
    Selection sel;
    NodeView view = View(id);
    if (role == v1::NODE_ROLE_PREFILL) {
      // Prefill nodes reserve tokens only; Reserve needs a decode side too.
      registry_.AddWork(id, view.epoch, 0, kBackgroundTokens);
    } else {
      (role == v1::NODE_ROLE_MIXED ? sel.mixed : sel.decode) = view;
      background_.push_back(Placement::Reserve(&registry_, sel, kBackgroundBlocks, 0));
    }
    return node;
  }
  NodeView View(const std::string& id) {
    for (const NodeView& v : registry_.Snapshot()) {
      if (v.id == id) return v;
    }
    ADD_FAILURE() << id << " is not registered";
    return {};
  }
  // Every node holds only the background reservation again.
  void ExpectCapacityBack() {
    for (const NodeView& v : registry_.Snapshot()) {
      if (v.role == v1::NODE_ROLE_PREFILL) {
        EXPECT_EQ(v.inflight_prefill_tokens, kBackgroundTokens) << v.id;
      } else {
        EXPECT_EQ(v.reserved_blocks, kBackgroundBlocks) << v.id;
        EXPECT_EQ(v.inflight_requests, 1) << v.id;
        EXPECT_EQ(v.inflight_prefill_tokens, 0) << v.id;
      }
    }
  }

  std::shared_ptr<GenerateCall> Start(std::shared_ptr<RecordingSink> sink, int32_t max_tokens = 4,
                                      std::vector<int32_t> prompt = {1, 2, 3, 4, 5}) {
    v1::GenerateRequest req;
    for (int32_t t : prompt) req.mutable_token_ids()->add_ids(t);
    req.mutable_stop()->set_max_tokens(max_tokens);
    req.mutable_stop()->set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(0);
    return GenerateCall::Begin(&ctx_, req, "tenant", std::nullopt, sink, MonoNowNs());
  }

  // Drives one P/D attempt to the end: token #1 from `prefill`, then the
  // rest from `decode`'s Admit number `admit_index`.
  static void Serve(FakeNodeClient& prefill, int prefill_index, FakeNodeClient& decode,
                    int admit_index, std::vector<int32_t> tokens) {
    std::shared_ptr<FakeNodeCall> p = prefill.WaitForCall(Kind::kPrefill, prefill_index);
    std::shared_ptr<FakeNodeCall> a = decode.WaitForCall(Kind::kAdmit, admit_index);
    ASSERT_NE(p, nullptr);
    ASSERT_NE(a, nullptr);
    a->Event(Admitted());
    p->Reply(FirstToken(tokens[0]));
    for (size_t i = 1; i < tokens.size(); ++i) a->Event(Chunk({tokens[i]}));
    a->Event(Done(v1::FINISH_REASON_LENGTH, static_cast<int32_t>(tokens.size())));
    a->Finish(absl::OkStatus());
  }

  tracing::MetricsRegistry metrics_registry_;
  NodeRegistry registry_{absl::Seconds(600)};
  RouterContext ctx_;
  std::map<std::string, std::shared_ptr<FakeNodeClient>> nodes_;
  std::vector<Placement> background_;
  FILE* timing_log_ = nullptr;
  std::unique_ptr<Dispatcher> dispatcher_;
};

TEST(PlacementTest, ReleasesEachPartOnceAndMovesTheReservation) {
  NodeRegistry registry(absl::Seconds(600));
  auto reg = [&](const std::string& id, v1::NodeRole role) {
    v1::NodeInfo info;
    info.set_node_id(id);
    info.set_role(role);
    info.set_address(id);
    info.set_kv_endpoint("kv");
    info.set_block_size(kBlockSize);
    v1::NodeLoad load;
    load.set_total_kv_blocks(100);
    registry.SetClientFactory(
        [](const std::string&) { return std::make_shared<FakeNodeClient>(); });
    ASSERT_TRUE(registry.Register(info, load).ok());
  };
  reg("p", v1::NODE_ROLE_PREFILL);
  reg("d", v1::NODE_ROLE_DECODE);
  auto view = [&](const std::string& id) {
    for (const NodeView& v : registry.Snapshot()) {
      if (v.id == id) return v;
    }
    return NodeView();
  };
  Selection sel;
  sel.prefill = view("p");
  sel.decode = view("d");
  {
    Placement keep = Placement::Reserve(&registry, sel, 7, 50);  // stays: a double release shows
    Placement p = Placement::Reserve(&registry, sel, 5, 30);
    EXPECT_EQ(view("d").reserved_blocks, 12);
    EXPECT_EQ(view("p").inflight_prefill_tokens, 80);
    p.ReleasePrefill();
    p.ReleasePrefill();
    EXPECT_EQ(view("p").inflight_prefill_tokens, 50);
    EXPECT_EQ(view("d").reserved_blocks, 12);
    Placement moved = std::move(p);
    p.Release();  // moved from: holds nothing
    EXPECT_EQ(view("d").reserved_blocks, 12);
    moved.ReleaseDecode();
    moved.Release();
    EXPECT_EQ(view("d").reserved_blocks, 7);
    Placement again = Placement::Reserve(&registry, sel, 3, 10);
    again = Placement();  // assignment releases what it held
    EXPECT_EQ(view("d").reserved_blocks, 7);
    EXPECT_EQ(view("p").inflight_prefill_tokens, 50);
  }
  EXPECT_EQ(view("d").reserved_blocks, 0);
  EXPECT_EQ(view("p").inflight_prefill_tokens, 0);
  EXPECT_EQ(view("d").inflight_requests, 0);
}

TEST_F(RouterFixture, PairStreamsTokensInOrderAndReturnsCapacity) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  Serve(*p, 0, *d, 0, {10, 11, 12, 13});
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->ok()) << s->error_message();
  EXPECT_THAT(sink->tokens(), ElementsAre(10, 11, 12, 13));
  std::optional<v1::Complete> c = sink->complete();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->usage().completion_tokens(), 4);
  EXPECT_EQ(c->prefill_node(), "prefill-0");
  EXPECT_EQ(c->decode_node(), "decode-0");
  // Admit and Prefill carry one transfer, its secret, finite deadlines.
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  std::shared_ptr<FakeNodeCall> ac = d->WaitForCall(Kind::kAdmit, 0);
  EXPECT_EQ(pc->prefill.transfer_id(), ac->admit.transfer_id());
  EXPECT_EQ(pc->prefill.kv_secret(), ac->admit.kv_secret());
  EXPECT_EQ(pc->prefill.kv_endpoint(), "kv-decode-0");
  EXPECT_LT(pc->options().deadline, absl::Now() + absl::Seconds(600));
  EXPECT_LT(ac->options().deadline, absl::InfiniteFuture());
  EXPECT_FALSE(pc->options().traceparent.empty());
  // The stages, router's and nodes', in the order they happened.
  std::map<std::string, int64_t> start;
  for (const v1::StageTiming& t : c->timings().stages()) start[t.stage()] = t.start_ns();
  for (const char* stage :
       {"router.tokenize", "router.queue", "prefill.compute", "decode.generate"}) {
    EXPECT_TRUE(start.contains(stage)) << stage;
  }
  EXPECT_LE(start["router.tokenize"], start["router.queue"]);
  EXPECT_LE(start["router.queue"], start["prefill.compute"]);
  EXPECT_LE(start["prefill.compute"], start["decode.generate"]);
  // The recorder wrote the timing log line.
  std::fflush(timing_log_);
  std::rewind(timing_log_);
  char line[4096] = {};
  ASSERT_NE(std::fgets(line, sizeof line, timing_log_), nullptr);
  EXPECT_THAT(std::string(line), HasSubstr("tenant/"));
  EXPECT_THAT(std::string(line), HasSubstr("prefill.compute"));
  ExpectCapacityBack();
}

// A short request whose KV lands before the decode node writes `admitted`:
// the node's whole stream (tokens, result, OK) can come before `admitted`,
// or without it, and before the prefill reply. Seen in-process.
TEST_F(RouterFixture, DecodeStreamThatEndsBeforeAdmittedAndBeforeTokenOneStillCompletes) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  for (bool prefill_first : {false, true}) {
    auto sink = std::make_shared<RecordingSink>();
    auto call = Start(sink, /*max_tokens=*/3);
    const int i = prefill_first ? 1 : 0;
    std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, i);
    std::shared_ptr<FakeNodeCall> ac = d->WaitForCall(Kind::kAdmit, i);
    ASSERT_NE(pc, nullptr);
    ASSERT_NE(ac, nullptr);
    if (prefill_first) pc->Reply(FirstToken(30));
    ac->Event(Chunk({31}));
    ac->Event(Chunk({32}));
    ac->Event(Done(v1::FINISH_REASON_LENGTH, 3));
    ac->Finish(absl::OkStatus());
    if (!prefill_first) pc->Reply(FirstToken(30));
    std::optional<grpc::Status> s = sink->Wait();
    ASSERT_TRUE(s.has_value()) << "the call hung (prefill first: " << prefill_first << ")";
    EXPECT_TRUE(s->ok()) << s->error_message();
    EXPECT_THAT(sink->tokens(), ElementsAre(30, 31, 32));
    EXPECT_TRUE(sink->complete().has_value());
    ExpectCapacityBack();
  }
}

// The decode stream ends OK with no result: an error, not a hang.
TEST_F(RouterFixture, DecodeStreamWithoutAResultFailsTheCall) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  std::shared_ptr<FakeNodeCall> ac = d->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(pc, nullptr);
  ASSERT_NE(ac, nullptr);
  ac->Event(Admitted());
  ac->Finish(absl::OkStatus());
  pc->Reply(FirstToken(30));
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::INTERNAL) << s->error_message();
  ExpectCapacityBack();
}

TEST_F(RouterFixture, RefusedDecodeNodeIsRetriedOnAnotherPair) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto bad = AddNode("decode-a", v1::NODE_ROLE_DECODE);
  auto good = AddNode("decode-b", v1::NODE_ROLE_DECODE);
  // Make decode-a the least loaded: the first attempt goes there.
  registry_.AddWork("decode-b", View("decode-b").epoch, 50, 0);
  bad->set_refuse(true);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  ASSERT_NE(bad->WaitForCall(Kind::kAdmit, 0), nullptr);
  // The first attempt's prefill is cancelled; the retry goes to decode-b.
  std::shared_ptr<FakeNodeCall> first_prefill = p->WaitForCall(Kind::kPrefill, 0);
  ASSERT_NE(first_prefill, nullptr);
  Serve(*p, 1, *good, 0, {7, 8, 9, 10});
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->ok()) << s->error_message();
  EXPECT_THAT(sink->tokens(), ElementsAre(7, 8, 9, 10));
  ASSERT_TRUE(sink->complete().has_value());
  EXPECT_TRUE(first_prefill->cancelled());
  EXPECT_EQ(sink->complete()->decode_node(), "decode-b");
  // The retry has its own id on the nodes.
  EXPECT_THAT(good->WaitForCall(Kind::kAdmit, 0)->admit.request().request_id(),
              HasSubstr("~retry1"));
  // The refused node is out of rotation (its connection is down).
  EXPECT_TRUE(View("decode-a").suspect);
  registry_.DoneWork("decode-b", View("decode-b").epoch, 50);
  ExpectCapacityBack();
}

TEST_F(RouterFixture, UnavailableMidStreamContinuesTokenExactOnAnotherPair) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto a = AddNode("decode-a", v1::NODE_ROLE_DECODE);
  auto b = AddNode("decode-b", v1::NODE_ROLE_DECODE);
  registry_.AddWork("decode-b", View("decode-b").epoch, 50, 0);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink, /*max_tokens=*/5);
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  std::shared_ptr<FakeNodeCall> ac = a->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(pc, nullptr);
  ASSERT_NE(ac, nullptr);
  ac->Event(Admitted());
  pc->Reply(FirstToken(20));
  ac->Event(Chunk({21}));
  ac->Finish(absl::UnavailableError("connection reset"));
  // The new pair gets prompt + the two tokens the client has.
  std::shared_ptr<FakeNodeCall> pc2 = p->WaitForCall(Kind::kPrefill, 1);
  std::shared_ptr<FakeNodeCall> bc = b->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(pc2, nullptr);
  ASSERT_NE(bc, nullptr);
  EXPECT_EQ(bc->admit.request().n_resumed(), 2);
  EXPECT_THAT(bc->admit.request().prompt(), ElementsAre(1, 2, 3, 4, 5, 20, 21));
  EXPECT_EQ(bc->admit.request().stop().max_tokens(), 3);
  bc->Event(Admitted());
  pc2->Reply(FirstToken(22));
  bc->Event(Chunk({23}));
  bc->Event(Chunk({24}));
  bc->Event(Done(v1::FINISH_REASON_LENGTH, 3));
  bc->Finish(absl::OkStatus());
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->ok()) << s->error_message();
  EXPECT_THAT(sink->tokens(), ElementsAre(20, 21, 22, 23, 24));
  ASSERT_TRUE(sink->complete().has_value()) << s->error_message();
  EXPECT_EQ(sink->complete()->usage().completion_tokens(), 5);
  bool migrate_stage = false;
  const v1::Complete complete = *sink->complete();
  for (const auto& t : complete.timings().stages()) {
    migrate_stage = migrate_stage || t.stage() == "router.migrate";
  }
  EXPECT_TRUE(migrate_stage);
  registry_.DoneWork("decode-b", View("decode-b").epoch, 50);
  ExpectCapacityBack();
}

TEST_F(RouterFixture, PrefillDeadlineFailsTheCallWithoutRetry) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  AddNode("decode-1", v1::NODE_ROLE_DECODE);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  ASSERT_NE(pc, nullptr);
  pc->Finish(absl::DeadlineExceededError("KV transfer did not finish within 5000 ms"));
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(s->error_message(), HasSubstr("KV transfer"));
  EXPECT_THAT(s->error_message(), HasSubstr("prefill node prefill-0"));
  EXPECT_TRUE(sink->tokens().empty());
  EXPECT_EQ(p->calls(Kind::kPrefill), 1);  // not retried
  // The decode side is cancelled, which frees its blocks on the node.
  std::shared_ptr<FakeNodeCall> any_admit = d->calls(Kind::kAdmit) > 0
                                                ? d->WaitForCall(Kind::kAdmit, 0)
                                                : nodes_["decode-1"]->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(any_admit, nullptr);
  EXPECT_TRUE(any_admit->cancelled());
  ExpectCapacityBack();
}

TEST_F(RouterFixture, ResourceExhaustedOnAdmitReachesTheClient) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  std::shared_ptr<FakeNodeCall> ac = d->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(ac, nullptr);
  ac->Finish(absl::ResourceExhaustedError("no free KV blocks"));
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s->error_message(), HasSubstr("decode node decode-0"));
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  ASSERT_NE(pc, nullptr);
  EXPECT_TRUE(pc->cancelled());
  ExpectCapacityBack();
  // The pair serves the next request.
  auto sink2 = std::make_shared<RecordingSink>();
  auto call2 = Start(sink2);
  Serve(*p, 1, *d, 1, {1, 2, 3, 4});
  ASSERT_TRUE(sink2->Wait().has_value());
  EXPECT_THAT(sink2->tokens(), ElementsAre(1, 2, 3, 4));
  ExpectCapacityBack();
}

TEST_F(RouterFixture, RetriesStopAtTheConfiguredBound) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  d->set_draining(true);  // stays in rotation: each retry comes back to it
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::UNAVAILABLE) << s->error_message();
  EXPECT_EQ(d->calls(Kind::kAdmit), 1 + ctx_.config.max_retries);
  ExpectCapacityBack();
}

TEST_F(RouterFixture, CancelWhileQueuedLeavesNothingReserved) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  // No room: the request waits in the queue.
  registry_.AddWork("decode-0", View("decode-0").epoch, kTotalBlocks - kBackgroundBlocks, 0);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(dispatcher_->queued(), 1);
  call->Cancel();
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::CANCELLED) << s->error_message();
  EXPECT_EQ(dispatcher_->queued(), 0);
  EXPECT_EQ(d->calls(Kind::kAdmit), 0);
  EXPECT_EQ(p->calls(Kind::kPrefill), 0);
  registry_.DoneWork("decode-0", View("decode-0").epoch, kTotalBlocks - kBackgroundBlocks);
  ExpectCapacityBack();
}

TEST_F(RouterFixture, CancelDuringPrefillCancelsBothNodeCalls) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  std::shared_ptr<FakeNodeCall> ac = d->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(pc, nullptr);
  ASSERT_NE(ac, nullptr);
  ac->Event(Admitted());
  call->Cancel();
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(pc->cancelled());
  EXPECT_TRUE(ac->cancelled());
  EXPECT_TRUE(sink->tokens().empty());
  EXPECT_EQ(sink->finishes(), 1);
  ExpectCapacityBack();
}

TEST_F(RouterFixture, CancelDuringDecodeEndsTheStreamOnce) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink, /*max_tokens=*/8);
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  std::shared_ptr<FakeNodeCall> ac = d->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(pc, nullptr);
  ASSERT_NE(ac, nullptr);
  ac->Event(Admitted());
  pc->Reply(FirstToken(3));
  ac->Event(Chunk({4}));
  call->Cancel();
  ac->Event(Chunk({5}));  // after the cancel: not sent
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_THAT(sink->tokens(), ElementsAre(3, 4));
  EXPECT_TRUE(ac->cancelled());
  EXPECT_EQ(sink->finishes(), 1);
  ExpectCapacityBack();
}

// Cancelled after token #1 but before the decode node showed the KV landed:
// the prefill node hears by transfer id (its Prefill call is over, and the
// decode node may never have seen Admit). Once a decode token came, or on a
// normal end, it does not.
TEST_F(RouterFixture, CancelBeforeTheKvLandedAbortsTheTransferAtThePrefillNode) {
  auto p = AddNode("prefill-0", v1::NODE_ROLE_PREFILL);
  auto d = AddNode("decode-0", v1::NODE_ROLE_DECODE);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink, /*max_tokens=*/8);
  std::shared_ptr<FakeNodeCall> pc = p->WaitForCall(Kind::kPrefill, 0);
  std::shared_ptr<FakeNodeCall> ac = d->WaitForCall(Kind::kAdmit, 0);
  ASSERT_NE(pc, nullptr);
  ASSERT_NE(ac, nullptr);
  ac->Event(Admitted());
  pc->Reply(FirstToken(3));
  call->Cancel();
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->error_code(), grpc::StatusCode::CANCELLED);
  std::vector<v1::NodeAbortRequest> aborts = p->aborts();
  ASSERT_EQ(aborts.size(), 1u);
  EXPECT_EQ(aborts[0].transfer_id(), pc->prefill.transfer_id());
  EXPECT_EQ(aborts[0].request_id(), pc->prefill.request().request_id());
  EXPECT_TRUE(d->aborts().empty());
  ExpectCapacityBack();

  // A token from the decode node: the KV landed, nothing to abort.
  auto sink2 = std::make_shared<RecordingSink>();
  auto call2 = Start(sink2, /*max_tokens=*/8);
  std::shared_ptr<FakeNodeCall> pc2 = p->WaitForCall(Kind::kPrefill, 1);
  std::shared_ptr<FakeNodeCall> ac2 = d->WaitForCall(Kind::kAdmit, 1);
  ASSERT_NE(pc2, nullptr);
  ASSERT_NE(ac2, nullptr);
  ac2->Event(Admitted());
  pc2->Reply(FirstToken(3));
  ac2->Event(Chunk({4}));
  call2->Cancel();
  ASSERT_TRUE(sink2->Wait().has_value());
  // A whole request: none either.
  auto sink3 = std::make_shared<RecordingSink>();
  auto call3 = Start(sink3);
  Serve(*p, 2, *d, 2, {10, 11, 12, 13});
  ASSERT_TRUE(sink3->Wait().has_value());
  EXPECT_EQ(p->aborts().size(), 1u);
  ExpectCapacityBack();
}

TEST_F(RouterFixture, MixedNodeStreamsAndReturnsItsBlocks) {
  auto m = AddNode("mixed-0", v1::NODE_ROLE_MIXED);
  auto sink = std::make_shared<RecordingSink>();
  auto call = Start(sink);
  std::shared_ptr<FakeNodeCall> gc = m->WaitForCall(Kind::kGenerate, 0);
  ASSERT_NE(gc, nullptr);
  // Its prompt counts as the node's queued prefill work until token #1.
  EXPECT_EQ(View("mixed-0").inflight_prefill_tokens, 5);
  gc->Event(Chunk({5, 6}));
  EXPECT_EQ(View("mixed-0").inflight_prefill_tokens, 0);
  gc->Event(Chunk({7}));
  gc->Event(Done(v1::FINISH_REASON_STOP, 3));
  gc->Finish(absl::OkStatus());
  std::optional<grpc::Status> s = sink->Wait();
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->ok()) << s->error_message();
  EXPECT_THAT(sink->tokens(), ElementsAre(5, 6, 7));
  ASSERT_TRUE(sink->complete().has_value());
  EXPECT_EQ(sink->complete()->finish_reason(), v1::FINISH_REASON_STOP);
  ExpectCapacityBack();
}

}  // namespace
}  // namespace pdserve::router
