// The KV data path against a hostile peer, on real processes: a caller of
// Node.Admit that ships KV itself with a forged token #1, out-of-range
// request fields on Admit and Prefill, and forged Begin frames on the decode
// node's KV port. Each time the nodes stay up, free their blocks, and serve
// the next genuine requests.
#include <climits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/secure_random.h"
#include "engine/gguf/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_harness.h"
#include "tests/unit/transport/raw_peer.h"
#include "transport/tcp_sender.h"
#include "transport/transfer_auth.h"

namespace pdserve::itest {
namespace {

using ::testing::HasSubstr;

#define REQUIRE_MODEL()                                                           \
  do {                                                                            \
    if (!HaveModel()) GTEST_SKIP() << "model absent: run scripts/fetch_model.sh"; \
  } while (0)

// What a peer needs to fill a decode node's blocks: from the model file and
// the node's own description.
struct KvShape {
  int32_t n_layers = 0;
  int64_t layer_block_bytes = 0;
  int64_t n_vocab = 0;
  std::string kv_endpoint;
};

KvShape ShapeOf(Cluster& c, const std::string& decode_id) {
  KvShape shape;
  auto file = gguf::GgufFile::Open(ModelPath());
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return shape;
  const std::string arch =
      std::string((*file)->GetString("general.architecture").value_or("llama"));
  auto get = [&](const std::string& key) {
    auto v = (*file)->GetUint(absl::StrCat(arch, ".", key));
    EXPECT_TRUE(v.ok()) << key << ": " << v.status();
    return v.ok() ? static_cast<int64_t>(*v) : 0;
  };
  shape.n_layers = static_cast<int32_t>(get("block_count"));
  const int64_t n_heads = get("attention.head_count");
  const int64_t n_kv_heads = get("attention.head_count_kv");
  const int64_t head_dim = n_heads > 0 ? get("embedding_length") / n_heads : 0;
  const gguf::Value* tokens = (*file)->Find("tokenizer.ggml.tokens");
  EXPECT_NE(tokens, nullptr);
  shape.n_vocab = tokens ? static_cast<int64_t>(tokens->array_size()) : 0;

  grpc::ClientContext ctx;
  v1::NodeInfo info;
  grpc::Status s = c.node(decode_id).GetInfo(&ctx, v1::GetLoadRequest(), &info);
  EXPECT_TRUE(s.ok()) << s.error_message();
  const int64_t elem = info.kv_dtype() == "f32" ? 4 : 2;
  shape.layer_block_bytes = 2 * n_kv_heads * info.block_size() * head_dim * elem;  // K and V
  shape.kv_endpoint = info.kv_endpoint();
  return shape;
}

v1::NodeRequest SmallRequest(const std::string& id) {
  v1::NodeRequest r;
  r.set_request_id(id);
  for (int i = 0; i < 24; ++i) r.add_prompt(100 + i);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_stop()->set_max_tokens(4);
  return r;
}

// Admits a request on the decode node directly and ships its KV (zeros) with
// the right secret, and a trailer whose token #1 is `token`. Returns the
// Admit call's final status.
grpc::Status AdmitAndShip(Cluster& c, const KvShape& shape, const std::string& id, int32_t token) {
  const uint64_t xfer = SecureRandomU64();
  const std::string secret = SecureRandomSecret128();
  v1::AdmitRequest req;
  *req.mutable_request() = SmallRequest(id);
  req.set_transfer_id(xfer);
  req.set_kv_secret(secret);
  req.set_kv_deadline_ms(30000);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = c.node("decode-0").Admit(&ctx, req);
  v1::DecodeEvent ev;
  if (!reader->Read(&ev) || !ev.has_admitted()) return reader->Finish();
  const int32_t blocks = ev.admitted().blocks();

  auto sender = transport::TcpKvSender::Create();
  EXPECT_TRUE(sender.ok()) << sender.status();
  std::vector<uint8_t> zeros(static_cast<size_t>(blocks * shape.layer_block_bytes), 0);
  auto h = (*sender)->StartTransfer(
      transport::TransferId{xfer}, *transport::TransferSecret::FromBytes(secret), shape.kv_endpoint,
      shape.n_layers, MonoClock::now() + std::chrono::seconds(30));
  EXPECT_TRUE(h.ok()) << h.status();
  if (h.ok()) {
    std::vector<transport::ConstBlockView> views;
    for (int32_t b = 0; b < blocks; ++b) {
      views.push_back({zeros.data() + b * shape.layer_block_bytes,
                       static_cast<size_t>(shape.layer_block_bytes)});
    }
    for (int32_t l = 0; l < shape.n_layers; ++l) EXPECT_TRUE((*h)->SendLayer(l, views).ok());
    v1::KvTrailer first;
    first.set_token_id(token);
    EXPECT_TRUE((*h)->Finish(first.SerializeAsString()).ok());
    absl::Status shipped = (*h)->Wait();
    EXPECT_TRUE(shipped.ok()) << shipped;  // the bytes themselves were fine
  }
  while (reader->Read(&ev)) {
  }
  return reader->Finish();
}

TEST(KvSecurityTest, ForgedTokenOneFailsThatRequestOnlyAndFreesItsBlocks) {
  REQUIRE_MODEL();
  auto c = Cluster::Start(ClusterOptions{});
  ASSERT_TRUE(c.ok()) << c.status();
  KvShape shape = ShapeOf(**c, "decode-0");
  ASSERT_GT(shape.n_layers, 0);
  ASSERT_GT(shape.n_vocab, 0);
  for (int32_t token : {INT_MAX, -5, static_cast<int32_t>(shape.n_vocab)}) {
    SCOPED_TRACE(token);
    grpc::Status s = AdmitAndShip(**c, shape, absl::StrCat("forged-", token), token);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("token #1"));
    EXPECT_TRUE((*c)->node_process("decode-0").Running()) << (*c)->Logs();
  }
  EXPECT_TRUE((*c)->WaitForIdleKv("decode-0", absl::Seconds(30)));
  // A token in range is served: the same path, so the check is not
  // refusing everything.
  EXPECT_TRUE(AdmitAndShip(**c, shape, "genuine-token", 42).ok());
  StreamResult after = Generate((*c)->generation(), GreedyRequest("Hello", 3));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

TEST(KvSecurityTest, OutOfRangeKvFieldsAreInvalidArgument) {
  REQUIRE_MODEL();
  auto c = Cluster::Start(ClusterOptions{});
  ASSERT_TRUE(c.ok()) << c.status();
  KvShape shape = ShapeOf(**c, "decode-0");

  auto admit = [&](auto mutate) {
    v1::AdmitRequest req;
    *req.mutable_request() = SmallRequest(absl::StrCat("admit-", SecureRandomU64()));
    req.set_transfer_id(SecureRandomU64());
    req.set_kv_secret(SecureRandomSecret128());
    req.set_kv_deadline_ms(1000);
    mutate(req);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = (*c)->node("decode-0").Admit(&ctx, req);
    v1::DecodeEvent ev;
    while (reader->Read(&ev)) {
    }
    return reader->Finish();
  };
  for (int64_t ms : {INT64_MAX, int64_t{-1}, int64_t{600001}}) {
    grpc::Status s = admit([&](v1::AdmitRequest& r) { r.set_kv_deadline_ms(ms); });
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << ms << ": " << s.error_message();
  }
  grpc::Status no_secret = admit([](v1::AdmitRequest& r) { r.clear_kv_secret(); });
  EXPECT_EQ(no_secret.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto prefill = [&](auto mutate) {
    v1::PrefillRequest req;
    *req.mutable_request() = SmallRequest(absl::StrCat("prefill-", SecureRandomU64()));
    req.set_kv_endpoint(shape.kv_endpoint);
    req.set_transfer_id(SecureRandomU64());
    req.set_kv_secret(SecureRandomSecret128());
    req.set_kv_deadline_ms(1000);
    mutate(req);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::PrefillResponse resp;
    return (*c)->node("prefill-0").Prefill(&ctx, req, &resp);
  };
  for (const char* endpoint : {"", "no-port", "evil host:80", "host:99999", "tcp:1.2.3.4:5"}) {
    grpc::Status s = prefill([&](v1::PrefillRequest& r) { r.set_kv_endpoint(endpoint); });
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << endpoint;
  }
  grpc::Status huge = prefill([](v1::PrefillRequest& r) { r.set_kv_deadline_ms(INT64_MAX); });
  EXPECT_EQ(huge.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << huge.error_message();
  grpc::Status short_secret = prefill([](v1::PrefillRequest& r) { r.set_kv_secret("short"); });
  EXPECT_EQ(short_secret.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  EXPECT_TRUE((*c)->WaitForIdleKv("decode-0", absl::Seconds(30)));
  EXPECT_TRUE((*c)->WaitForIdleKv("prefill-0", absl::Seconds(30)));
  StreamResult after = Generate((*c)->generation(), GreedyRequest("Hello", 3));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

// The reproduced attack: forged Begins on the decode node's KV port made
// every later request fail with ALREADY_EXISTS.
TEST(KvSecurityTest, ForgedBeginsOnTheKvPortBlockNoRequest) {
  REQUIRE_MODEL();
  auto c = Cluster::Start(ClusterOptions{});
  ASSERT_TRUE(c.ok()) << c.status();
  KvShape shape = ShapeOf(**c, "decode-0");
  auto attacker = transport::testing::RawPeer::Connect(shape.kv_endpoint);
  for (uint64_t x = 1; x <= 60; ++x) {
    ASSERT_TRUE(attacker->Send(transport::testing::BeginBytes(
        x, static_cast<uint32_t>(shape.n_layers), 60000, transport::TransferSecret::Random())));
  }
  int served = 0;
  for (int i = 0; i < 20; ++i) {
    StreamResult r = Generate((*c)->generation(), GreedyRequest(absl::StrCat("Count to ", i), 3));
    if (r.status.ok())
      ++served;
    else
      ADD_FAILURE() << r.status.error_message();
  }
  EXPECT_EQ(served, 20);
  EXPECT_TRUE((*c)->node_process("decode-0").Running());
  EXPECT_TRUE((*c)->WaitForIdleKv("decode-0", absl::Seconds(30)));
}

}  // namespace
}  // namespace pdserve::itest
