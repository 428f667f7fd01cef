// Separate credentials, node-id leases, the model fingerprint and tenancy on
// the router and the Node service (issue 12, part B). The router and a node
// run in this process; the nodes the router dispatches to are fakes (the
// Node service with no model) so a test can hold a stream open and see
// which node, with which request id, got each request. The last test runs
// `pdserve cluster` and reads its children's command lines.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "engine/dummy_model.h"
#include "engine/gguf/gguf.h"
#include "engine/model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node/node_server.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "pdserve/v1/node.grpc.pb.h"
#include "router/router_server.h"
#include "rpc/model_fingerprint.h"
#include "tests/integration/cluster_harness.h"
#include "transport/tcp_socket.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

constexpr char kKeyA[] = "sk-tenant-a-0123456789";
constexpr char kKeyB[] = "sk-tenant-b-9876543210";
constexpr char kNodeToken[] = "nt-cluster-node-token-42";

// The router needs only a vocabulary: the real model when present, else a
// vocabulary-only GGUF from the test data.
std::string VocabPath() {
  if (itest::HaveModel()) return itest::ModelPath();
  return std::string(PDSERVE_TESTDATA_DIR) + "/tokenizer/ggml-vocab-llama-spm.gguf";
}

std::string Fingerprint(const std::string& path) {
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> f = gguf::GgufFile::Open(path);
  return f.ok() ? rpc::ModelFingerprint(**f) : "";
}

std::string TempFile(const std::string& name, const std::string& content) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", getpid(), "-", name);
  std::ofstream(path) << content;
  return path;
}

template <typename Context>
void Bearer(Context* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

// ---- a fake mixed node ----

// Streams token 7, then holds the stream until the test releases the
// request (then completes it) or the router cancels it.
class FakeNode final : public v1::Node::Service {
 public:
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::NodeRequest* req,
                        grpc::ServerWriter<v1::DecodeEvent>* writer) override {
    {
      absl::MutexLock lock(&mu_);
      seen_.push_back(req->request_id());
    }
    v1::DecodeEvent chunk;
    chunk.mutable_chunk()->add_token_ids(7);
    chunk.mutable_chunk()->set_text("x");
    chunk.mutable_chunk()->mutable_usage()->set_completion_tokens(1);
    if (!writer->Write(chunk)) return grpc::Status::CANCELLED;
    const std::string id = req->request_id();
    auto released = [this, &id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return release_all_ || released_.contains(id);
    };
    {
      absl::MutexLock lock(&mu_);
      while (!released()) {
        if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
        mu_.AwaitWithTimeout(absl::Condition(&released), absl::Milliseconds(20));
      }
    }
    v1::DecodeEvent done;
    done.mutable_complete()->set_finish_reason(v1::FINISH_REASON_STOP);
    done.mutable_complete()->mutable_usage()->set_completion_tokens(1);
    writer->Write(done);
    return grpc::Status::OK;
  }

  grpc::Status GetLoad(grpc::ServerContext*, const v1::GetLoadRequest*,
                       v1::NodeLoad* load) override {
    *load = Load();
    return grpc::Status::OK;
  }

  static v1::NodeLoad Load() {
    v1::NodeLoad load;
    load.set_free_kv_blocks(1 << 20);
    load.set_total_kv_blocks(1 << 20);
    return load;
  }

  void Release(const std::string& node_request_id) {
    absl::MutexLock lock(&mu_);
    released_.insert(node_request_id);
  }
  void ReleaseAll() {
    absl::MutexLock lock(&mu_);
    release_all_ = true;
  }
  std::vector<std::string> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> seen_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> released_ ABSL_GUARDED_BY(mu_);
  bool release_all_ ABSL_GUARDED_BY(mu_) = false;
};

struct FakeServer {
  FakeNode service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }

  static std::unique_ptr<FakeServer> Start() {
    auto f = std::make_unique<FakeServer>();
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &f->port);
    b.RegisterService(&f->service);
    f->server = b.BuildAndStart();
    return f;
  }
  ~FakeServer() {
    service.ReleaseAll();
    if (server) server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
};

v1::NodeInfo MixedInfo(const std::string& id, const std::string& address,
                       const std::string& fingerprint) {
  v1::NodeInfo info;
  info.set_node_id(id);
  info.set_role(v1::NODE_ROLE_MIXED);
  info.set_address(address);
  info.set_model_fingerprint(fingerprint);
  info.set_block_size(16);
  info.set_context_length(2048);
  return info;
}

// ---- the router in this process ----

struct RouterUnderTest {
  std::unique_ptr<router::RouterServer> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Registry::Stub> registry;
  std::unique_ptr<v1::Generation::Stub> generation;
  std::string fingerprint;

  static std::unique_ptr<RouterUnderTest> Start(const rpc::SecurityFiles& security,
                                                bool http = false) {
    router::RouterOptions o;
    o.model_path = VocabPath();
    o.listen = "127.0.0.1:0";
    if (http) {
      o.http_port = 0;
      o.http_bind = "127.0.0.1";
      o.served_model_name = "m";
    }
    o.node_expiry_ms = 60000;  // a registration stays live for the whole test
    o.config.queue_timeout_ms = 20000;
    o.security = security;
    absl::StatusOr<std::unique_ptr<router::RouterServer>> s = router::RouterServer::Start(o);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return nullptr;
    auto r = std::make_unique<RouterUnderTest>();
    r->server = std::move(*s);
    r->channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", r->server->port()),
                                     grpc::InsecureChannelCredentials());
    r->registry = v1::Registry::NewStub(r->channel);
    r->generation = v1::Generation::NewStub(r->channel);
    r->fingerprint = Fingerprint(o.model_path);
    return r;
  }

  grpc::Status Register(const v1::NodeInfo& info, const std::string& token,
                        v1::RegisterResponse* resp, const std::string& lease = "") {
    grpc::ClientContext ctx;
    Bearer(&ctx, token);
    v1::RegisterRequest req;
    *req.mutable_info() = info;
    *req.mutable_load() = FakeNode::Load();
    req.set_lease(lease);
    return registry->Register(&ctx, req, resp);
  }
  grpc::Status Heartbeat(const std::string& id, const std::string& token, const std::string& lease,
                         v1::HeartbeatResponse* resp) {
    grpc::ClientContext ctx;
    Bearer(&ctx, token);
    v1::HeartbeatRequest req;
    req.set_node_id(id);
    req.set_lease(lease);
    *req.mutable_load() = FakeNode::Load();
    return registry->Heartbeat(&ctx, req, resp);
  }
  grpc::Status Deregister(const std::string& id, const std::string& token,
                          const std::string& lease) {
    grpc::ClientContext ctx;
    Bearer(&ctx, token);
    v1::DeregisterRequest req;
    req.set_node_id(id);
    req.set_lease(lease);
    v1::DeregisterResponse resp;
    return registry->Deregister(&ctx, req, &resp);
  }
  grpc::Status ListNodes(const std::string& token, v1::ListNodesResponse* resp) {
    grpc::ClientContext ctx;
    Bearer(&ctx, token);
    return registry->ListNodes(&ctx, v1::ListNodesRequest(), resp);
  }
  grpc::Status Abort(const std::string& key, const std::string& id, v1::AbortResponse* resp) {
    grpc::ClientContext ctx;
    Bearer(&ctx, key);
    v1::AbortRequest req;
    req.set_request_id(id);
    return generation->Abort(&ctx, req, resp);
  }
};

v1::GenerateRequest Request(const std::string& id) {
  v1::GenerateRequest r;
  r.set_request_id(id);
  for (int t : {1, 2, 3, 4}) r.mutable_token_ids()->add_ids(t);
  r.mutable_stop()->set_max_tokens(4);
  return r;
}

// One client stream read on its own thread.
class ClientStream {
 public:
  ClientStream(v1::Generation::Stub* stub, const std::string& key, const v1::GenerateRequest& req) {
    Bearer(&ctx_, key);
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    thread_ = std::thread([this, stub, req] {
      auto reader = stub->Generate(&ctx_, req);
      v1::GenerateResponse r;
      while (reader->Read(&r)) {
        absl::MutexLock lock(&mu_);
        events_.push_back(r);
      }
      grpc::Status s = reader->Finish();
      absl::MutexLock lock(&mu_);
      status_ = s;
      done_ = true;
    });
  }
  ~ClientStream() {
    ctx_.TryCancel();
    thread_.join();
  }
  // True once the first chunk arrived (or the stream ended).
  bool WaitFirstChunk() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](ClientStream* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
                                      return s->done_ || !s->events_.empty();
                                    },
                                    this),
                                absl::Seconds(30));
  }
  grpc::Status Wait() {
    thread_.join();
    thread_ = std::thread([] {});
    absl::MutexLock lock(&mu_);
    return status_;
  }
  bool done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  std::vector<v1::GenerateResponse> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::optional<v1::Complete> complete() {
    for (const v1::GenerateResponse& r : events()) {
      if (r.has_complete()) return r.complete();
    }
    return std::nullopt;
  }

 private:
  grpc::ClientContext ctx_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<v1::GenerateResponse> events_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// Router with two tenants' keys (one file) and a node token.
rpc::SecurityFiles TwoTenants() {
  rpc::SecurityFiles f;
  f.api_key_file = TempFile("api-keys", absl::StrCat("# tenants\n", kKeyA, "\n\n", kKeyB, "\n"));
  f.node_token = kNodeToken;
  return f;
}

// ---- separate credentials ----

TEST(SecurityRegistryTest, ClientApiKeyIsRefusedByTheRegistry) {
  auto r = RouterUnderTest::Start(TwoTenants());
  ASSERT_NE(r, nullptr);
  auto node = FakeServer::Start();
  const v1::NodeInfo info = MixedInfo("mixed-0", node->address(), r->fingerprint);

  v1::RegisterResponse resp;
  grpc::Status s = r->Register(info, kKeyA, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("does not accept client API keys"));
  v1::ListNodesResponse list;
  EXPECT_EQ(r->ListNodes(kKeyB, &list).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(r->Register(info, "", &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(r->Register(info, "guess", &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_FALSE(r->server->registry().Has("mixed-0"));

  // The node token registers; clients still reach the Generation API with
  // their keys, and the node token is no client key.
  ASSERT_TRUE(r->Register(info, kNodeToken, &resp).ok());
  EXPECT_FALSE(resp.lease().empty());
  EXPECT_TRUE(r->ListNodes(kNodeToken, &list).ok());
  EXPECT_EQ(list.nodes_size(), 1);
  grpc::ClientContext ctx;
  Bearer(&ctx, kNodeToken);
  v1::ModelInfo model;
  EXPECT_EQ(r->generation->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &model).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext ctx2;
  Bearer(&ctx2, kKeyB);
  ASSERT_TRUE(r->generation->GetModelInfo(&ctx2, v1::GetModelInfoRequest(), &model).ok());
  EXPECT_EQ(model.fingerprint(), r->fingerprint);
}

TEST(SecurityRegistryTest, SecurityRefusesANodeTokenThatIsAlsoAClientKey) {
  rpc::SecurityFiles f;
  f.api_key = kKeyA;
  f.node_token = kKeyA;
  absl::StatusOr<rpc::Security> s = rpc::Security::Load(f);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("separate credentials"));
}

TEST(SecurityRegistryTest, ApiKeyFileHoldsOneTenantPerLine) {
  rpc::SecurityFiles f;
  f.api_key_file = TempFile("keys-parse", "# operators' keys\n\n  k-one  \nk-two\nk-one\n");
  absl::StatusOr<rpc::Security> s = rpc::Security::Load(f);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(s->api_keys, ::testing::ElementsAre("k-one", "k-two"));
  ASSERT_EQ(s->tenants.size(), 2u);
  EXPECT_NE(s->tenants[0], s->tenants[1]);
  EXPECT_EQ(*s->ClientTenant("k-two"), rpc::TenantOfKey("k-two"));
  EXPECT_EQ(s->ClientTenant("k-three").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s->ClientTenant(std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
  // No node token: the legacy shared-key mode, announced by a warning.
  EXPECT_TRUE(s->CheckNode("k-one", false, "Registry").ok());
  EXPECT_FALSE(s->CheckNode("k-three", false, "Registry").ok());
  EXPECT_THAT(s->NodeAuthWarning(), HasSubstr("any client API key"));
  rpc::Security with_token = *s;
  with_token.node_token = "t";
  EXPECT_EQ(with_token.CheckNode("k-one", false, "Registry").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(with_token.NodeAuthWarning().empty());

  f.api_key_file = TempFile("keys-bad", "good\nbad key\n");
  s = rpc::Security::Load(f);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("line 2"));
  f.api_key_file = TempFile("keys-empty", "# nothing\n\n");
  EXPECT_FALSE(rpc::Security::Load(f).ok());
}

// The Node service of a real node (a tiny random-weight model) takes only
// the node credential.
TEST(SecurityNodeServiceTest, ClientApiKeyIsRefusedByTheNodeService) {
  DummyModelSpec spec;
  absl::StatusOr<std::string> image = BuildDummyModelGguf(spec);
  ASSERT_TRUE(image.ok()) << image.status();
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::FromBytes(*image);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<std::unique_ptr<Model>> model = Model::FromGguf(std::move(*file));
  ASSERT_TRUE(model.ok()) << model.status();
  node::NodeOptions o;
  o.role = node::NodeRole::kMixed;
  o.node_id = "mixed-under-test";
  o.listen = "127.0.0.1:0";
  o.engine.n_threads = 1;
  o.engine.kv_cache_bytes = 4 << 20;
  o.security.api_key = kKeyA;  // known to it, so it can say what was refused
  o.security.node_token = kNodeToken;
  absl::StatusOr<std::unique_ptr<node::NodeServer>> n =
      node::NodeServer::Start(o, std::shared_ptr<const Model>(std::move(*model)));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ((*n)->Info().model_fingerprint(), rpc::ModelFingerprint((*n)->engine().model().file()));
  auto stub = v1::Node::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*n)->port()),
                                                    grpc::InsecureChannelCredentials()));

  auto get_load = [&](const std::string& token) {
    grpc::ClientContext ctx;
    Bearer(&ctx, token);
    v1::NodeLoad load;
    return stub->GetLoad(&ctx, v1::GetLoadRequest(), &load);
  };
  grpc::Status s = get_load(kKeyA);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("Node service does not accept client API keys"));
  EXPECT_EQ(get_load("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(get_load(kKeyB).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(get_load(kNodeToken).ok());

  // Abort and Generate too: a client key cannot abort or run work on a node.
  grpc::ClientContext abort_ctx;
  Bearer(&abort_ctx, kKeyA);
  v1::NodeAbortRequest abort;
  abort.set_request_id("anon/x");
  v1::NodeAbortResponse abort_resp;
  EXPECT_EQ(stub->Abort(&abort_ctx, abort, &abort_resp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext gen_ctx;
  Bearer(&gen_ctx, kKeyA);
  v1::NodeRequest req;
  req.set_request_id("anon/y");
  req.add_prompt(1);
  auto reader = stub->Generate(&gen_ctx, req);
  v1::DecodeEvent ev;
  EXPECT_FALSE(reader->Read(&ev));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  (*n)->Shutdown(absl::ZeroDuration());
}

// ---- node-id takeover ----

// A rogue that registers under the id of a live node, with a client key
// (the attack of issue 12) or even with the node token, is refused, and
// every user request still reaches the real node.
void ExpectTakeoverRefused(const rpc::SecurityFiles& security, const std::string& real_token,
                           const std::string& rogue_token, const std::string& user_key) {
  auto r = RouterUnderTest::Start(security);
  ASSERT_NE(r, nullptr);
  auto real = FakeServer::Start();
  auto rogue = FakeServer::Start();
  real->service.ReleaseAll();
  rogue->service.ReleaseAll();
  v1::RegisterResponse real_reg;
  ASSERT_TRUE(
      r->Register(MixedInfo("decode-0", real->address(), r->fingerprint), real_token, &real_reg)
          .ok());

  const v1::NodeInfo fake = MixedInfo("decode-0", rogue->address(), r->fingerprint);
  v1::RegisterResponse rogue_reg;
  grpc::Status s = r->Register(fake, rogue_token, &rogue_reg);
  EXPECT_FALSE(s.ok());
  if (rogue_token == real_token) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("registered and heartbeating"));
  }
  // A made-up lease does not help, nor do heartbeats or Deregister without
  // the real one.
  EXPECT_FALSE(r->Register(fake, rogue_token, &rogue_reg, "00112233445566778899aabbccddeeff").ok());
  v1::HeartbeatResponse hb;
  EXPECT_FALSE(r->Heartbeat("decode-0", rogue_token, "wrong", &hb).ok());
  EXPECT_FALSE(r->Deregister("decode-0", rogue_token, "wrong").ok());
  if (rogue_token == real_token) {
    EXPECT_EQ(r->Heartbeat("decode-0", rogue_token, "wrong", &hb).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  // The real node keeps its registration with its lease.
  ASSERT_TRUE(r->Heartbeat("decode-0", real_token, real_reg.lease(), &hb).ok());
  EXPECT_TRUE(hb.known());

  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext ctx;
    Bearer(&ctx, user_key);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = r->generation->Generate(&ctx, Request(""));
    v1::GenerateResponse resp;
    std::optional<v1::Complete> complete;
    while (reader->Read(&resp)) {
      if (resp.has_complete()) complete = resp.complete();
    }
    ASSERT_TRUE(reader->Finish().ok());
    ASSERT_TRUE(complete.has_value());
    EXPECT_EQ(complete->decode_node(), "decode-0");
  }
  EXPECT_EQ(real->service.seen().size(), 5u);
  EXPECT_TRUE(rogue->service.seen().empty()) << "the rogue node received user requests";
}

TEST(SecurityTakeoverTest, RogueWithClientKeyCannotTakeOverALiveNodeId) {
  ExpectTakeoverRefused(TwoTenants(), kNodeToken, kKeyA, kKeyB);
}

TEST(SecurityTakeoverTest, RogueWithTheNodeTokenCannotTakeOverALiveNodeId) {
  ExpectTakeoverRefused(TwoTenants(), kNodeToken, kNodeToken, kKeyA);
}

// The deployment of the issue's reproduction: one shared --api-key, no node
// token, no TLS (legacy). The key may still register nodes, but not take a
// live node's id.
TEST(SecurityTakeoverTest, SharedApiKeyAloneCannotTakeOverALiveNodeId) {
  rpc::SecurityFiles f;
  f.api_key = kKeyA;
  ExpectTakeoverRefused(f, kKeyA, kKeyA, kKeyA);
}

// A restarted node (no lease) comes back once its old registration expired
// or was deregistered; the old lease then stops working.
TEST(SecurityTakeoverTest, RestartedNodeRegistersAgainAfterExpiryOrDeregister) {
  router::NodeRegistry registry(absl::Milliseconds(200));
  const v1::NodeInfo info = MixedInfo("node-1", "127.0.0.1:1", "fp");
  absl::StatusOr<std::string> first = registry.Register(info, FakeNode::Load());
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(registry.Register(info, FakeNode::Load()).status().code(),
            absl::StatusCode::kAlreadyExists);
  // The same instance may re-register (e.g. a new address) with its lease.
  v1::NodeInfo moved = info;
  moved.set_address("127.0.0.1:2");
  absl::StatusOr<std::string> again = registry.Register(moved, FakeNode::Load(), *first);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *first);

  // Silent past the expiry: a new instance takes the id, with a new lease.
  absl::SleepFor(absl::Milliseconds(300));
  absl::StatusOr<std::string> second = registry.Register(info, FakeNode::Load());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE(*second, *first);
  EXPECT_EQ(registry.Heartbeat("node-1", *first, FakeNode::Load()).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(registry.Heartbeat("node-1", *second, FakeNode::Load()).ok());

  // Deregistered with its lease: the id is free at once.
  EXPECT_EQ(registry.Deregister("node-1", *first).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(registry.Deregister("node-1", *second).ok());
  EXPECT_TRUE(registry.Register(info, FakeNode::Load()).ok());
}

// ---- model fingerprint ----

TEST(SecurityFingerprintTest, NodeServingAnotherModelIsRefused) {
  auto r = RouterUnderTest::Start(TwoTenants());
  ASSERT_NE(r, nullptr);
  ASSERT_FALSE(r->fingerprint.empty());
  auto node = FakeServer::Start();
  const std::string other =
      Fingerprint(std::string(PDSERVE_TESTDATA_DIR) + "/tokenizer/ggml-vocab-gpt-2.gguf");
  ASSERT_FALSE(other.empty());
  ASSERT_NE(other, r->fingerprint);
  v1::RegisterResponse resp;
  grpc::Status s = r->Register(MixedInfo("mixed-0", node->address(), other), kNodeToken, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr(other));
  EXPECT_THAT(s.error_message(), HasSubstr(r->fingerprint));
  EXPECT_FALSE(r->server->registry().Has("mixed-0"));
  // Being first does not let a node pin its model: the same model registers.
  EXPECT_TRUE(
      r->Register(MixedInfo("mixed-0", node->address(), r->fingerprint), kNodeToken, &resp).ok());
}

// ---- tenancy ----

TEST(SecurityTenancyTest, AbortWorksOnlyOnTheCallersOwnRequests) {
  auto r = RouterUnderTest::Start(TwoTenants());
  ASSERT_NE(r, nullptr);
  auto node = FakeServer::Start();
  v1::RegisterResponse reg;
  ASSERT_TRUE(
      r->Register(MixedInfo("mixed-0", node->address(), r->fingerprint), kNodeToken, &reg).ok());

  ClientStream a(r->generation.get(), kKeyA, Request("a"));
  ASSERT_TRUE(a.WaitFirstChunk());
  ASSERT_FALSE(a.done()) << a.Wait().error_message();

  // Tenant B cannot see or abort A's request "a"...
  v1::AbortResponse abort;
  ASSERT_TRUE(r->Abort(kKeyB, "a", &abort).ok());
  EXPECT_FALSE(abort.found());
  // ...and may use the same id itself: no ALREADY_EXISTS, no oracle.
  ClientStream b(r->generation.get(), kKeyB, Request("a"));
  ASSERT_TRUE(b.WaitFirstChunk());
  ASSERT_FALSE(b.done()) << b.Wait().error_message();
  // Within one tenant, ids stay unique.
  ClientStream a_again(r->generation.get(), kKeyA, Request("a"));
  EXPECT_EQ(a_again.Wait().error_code(), grpc::StatusCode::ALREADY_EXISTS);

  // The node saw two different ids, each scoped by its tenant.
  const std::vector<std::string> seen = node->service.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_NE(seen[0], seen[1]);
  for (const std::string& id : seen) EXPECT_TRUE(absl::EndsWith(id, "/a")) << id;
  EXPECT_EQ(seen[0].substr(0, seen[0].size() - 2), rpc::TenantOfKey(kKeyA));
  EXPECT_EQ(seen[1].substr(0, seen[1].size() - 2), rpc::TenantOfKey(kKeyB));

  // A's stream was not touched: it completes normally when the node finishes.
  node->service.Release(seen[0]);
  ASSERT_TRUE(a.Wait().ok());
  ASSERT_TRUE(a.complete().has_value());
  EXPECT_EQ(a.complete()->finish_reason(), v1::FINISH_REASON_STOP);
  for (const v1::GenerateResponse& e : a.events()) EXPECT_EQ(e.request_id(), "a");

  // B aborts its own "a": found, and its stream ends with ABORT.
  ASSERT_TRUE(r->Abort(kKeyB, "a", &abort).ok());
  EXPECT_TRUE(abort.found());
  ASSERT_TRUE(b.Wait().ok());
  ASSERT_TRUE(b.complete().has_value());
  EXPECT_EQ(b.complete()->finish_reason(), v1::FINISH_REASON_ABORT);

  // No key, a wrong key or the node token: no Abort at all.
  EXPECT_EQ(r->Abort("", "a", &abort).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(r->Abort(kNodeToken, "a", &abort).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// One HTTP/1.1 exchange on a fresh connection; returns the status code and
// the body (everything after the headers).
std::pair<int, std::string> HttpCall(int port, const std::string& method, const std::string& path,
                                     const std::string& bearer, const std::string& body = "") {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return {-1, ""};
  }
  std::string req =
      absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
  if (!bearer.empty()) absl::StrAppend(&req, "Authorization: Bearer ", bearer, "\r\n");
  absl::StrAppend(&req, "Content-Type: application/json\r\nContent-Length: ", body.size(),
                  "\r\n\r\n", body);
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  int code = -1;
  if (resp.size() > 12) (void)absl::SimpleAtoi(resp.substr(9, 3), &code);
  const size_t head_end = resp.find("\r\n\r\n");
  return {code, head_end == std::string::npos ? "" : resp.substr(head_end + 4)};
}

// The OpenAI HTTP API takes client keys only, and scopes its requests by
// the caller's tenant like the gRPC API.
TEST(SecurityTenancyTest, OpenAiHttpApiTakesClientKeysAndScopesRequests) {
  auto r = RouterUnderTest::Start(TwoTenants(), /*http=*/true);
  ASSERT_NE(r, nullptr);
  const int port = r->server->http_port();
  ASSERT_GT(port, 0);
  EXPECT_EQ(HttpCall(port, "GET", "/v1/models", kKeyB).first, 200);
  EXPECT_EQ(HttpCall(port, "GET", "/v1/models", kNodeToken).first, 401);
  EXPECT_EQ(HttpCall(port, "GET", "/v1/models", "").first, 401);
  EXPECT_EQ(HttpCall(port, "GET", "/health", "").first, 200);

  auto node = FakeServer::Start();
  node->service.ReleaseAll();
  v1::RegisterResponse reg;
  ASSERT_TRUE(
      r->Register(MixedInfo("mixed-0", node->address(), r->fingerprint), kNodeToken, &reg).ok());
  const std::string body = R"({"model": "m", "prompt": [1, 2, 3], "max_tokens": 2})";
  EXPECT_EQ(HttpCall(port, "POST", "/v1/completions", kNodeToken, body).first, 401);
  auto [code, text] = HttpCall(port, "POST", "/v1/completions", kKeyA, body);
  EXPECT_EQ(code, 200) << text;
  const std::vector<std::string> seen = node->service.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(absl::StartsWith(seen[0], rpc::TenantOfKey(kKeyA) + "/cmpl-")) << seen[0];
}

// ---- secrets never on a child's argv ----

TEST(SecurityClusterTest, ChildrenCommandLinesHoldNoSecret) {
  if (!itest::HaveModel()) GTEST_SKIP() << "model absent: run scripts/fetch_model.sh";
  const std::string secret = "sk-argv-secret-31337";
  const int port = transport::internal::FreeLoopbackPort();
  const std::string log = absl::StrCat(::testing::TempDir(), "/", getpid(), "-cluster.log");
  auto cluster = itest::ChildProcess::Start(
      "cluster",
      {itest::PdserveBinary(), "cluster", "--model", itest::ModelPath(), "--port",
       std::to_string(port), "--threads", "1", "--api-key", secret},
      log);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (!absl::StrContains(itest::ReadFile(log), "cluster ready") && absl::Now() < deadline &&
         (*cluster)->Running()) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_THAT(itest::ReadFile(log), HasSubstr("cluster ready")) << (*cluster)->LogTail();

  const std::vector<pid_t> children = itest::ChildrenOf((*cluster)->pid());
  ASSERT_EQ(children.size(), 3u) << "router, prefill and decode";
  std::string token_file;
  for (pid_t pid : children) {
    std::string cmdline = itest::ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    EXPECT_THAT(cmdline, ::testing::Not(HasSubstr(secret))) << "child " << pid;
    std::vector<std::string> args = absl::StrSplit(cmdline, '\0');
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--node-token-file") token_file = args[i + 1];
    }
    const std::string env = itest::ReadFile(absl::StrCat("/proc/", pid, "/environ"));
    EXPECT_THAT(env, ::testing::Not(HasSubstr(secret)));
  }
  ASSERT_FALSE(token_file.empty()) << "the children get the node token by file";
  // Read once at startup: the private directory is gone once the cluster is up.
  const std::string dir = std::filesystem::path(token_file).parent_path().string();
  EXPECT_FALSE(std::filesystem::exists(dir)) << "the secrets' directory outlived the startup";

  // The router's Registry takes the generated token, not the client key.
  auto registry = v1::Registry::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  auto list = [&](const std::string& t) {
    grpc::ClientContext ctx;
    Bearer(&ctx, t);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListNodesResponse resp;
    return registry->ListNodes(&ctx, v1::ListNodesRequest(), &resp);
  };
  // (The nodes registered with the token the cluster made, so it works.)
  EXPECT_EQ(list(secret).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(list("").error_code(), grpc::StatusCode::UNAUTHENTICATED);

  (*cluster)->Signal(SIGTERM);
  EXPECT_TRUE((*cluster)->WaitExit(absl::Seconds(60)).has_value());
}

}  // namespace
}  // namespace pdserve
