// GrpcClient against an in-process Generation service: streams, usage,
// failures, and CancelAll on streams that never end.
#include <future>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "loadgen/grpc_client.h"

namespace pdserve::loadgen {
namespace {

// Generates max_tokens chunks of one token; prompts of token id 0 hang until
// cancelled; prompts of token id 1 fail with RESOURCE_EXHAUSTED.
class FakeGeneration final : public v1::Generation::Service {
 public:
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    const int first = req->token_ids().ids_size() > 0 ? req->token_ids().ids(0) : -1;
    if (first == 1) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
    if (first == 0) {
      v1::GenerateResponse r;
      r.mutable_chunk()->add_token_ids(9);
      writer->Write(r);
      while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    for (int i = 0; i < req->stop().max_tokens(); ++i) {
      v1::GenerateResponse r;
      r.set_request_id(req->request_id());
      r.mutable_chunk()->add_token_ids(100 + i);
      r.mutable_chunk()->set_text("x");
      writer->Write(r);
    }
    v1::GenerateResponse done;
    v1::Complete* c = done.mutable_complete();
    c->set_finish_reason(v1::FINISH_REASON_LENGTH);
    c->mutable_usage()->set_prompt_tokens(req->token_ids().ids_size());
    c->mutable_usage()->set_completion_tokens(req->stop().max_tokens());
    v1::StageTiming* t = c->mutable_timings()->add_stages();
    t->set_stage("decode.generate");
    t->set_duration_ns(5000);
    writer->Write(done);
    return grpc::Status::OK;
  }
  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    info->set_model("fake");
    info->set_vocab_size(1000);
    info->add_eos_token_ids(2);
    info->set_bos_token_id(1);
    return grpc::Status::OK;
  }
};

class GrpcClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    client_ = std::make_unique<GrpcClient>(absl::StrCat("127.0.0.1:", port_));
  }
  void TearDown() override {
    client_.reset();  // cancels and waits for its calls first
    server_->Shutdown();
  }
  static RequestInput Prompt(int32_t first_id, int max_tokens) {
    RequestInput in;
    in.id = absl::StrCat("r", first_id, "-", max_tokens);
    in.token_ids = {first_id, 50, 51};
    in.input_tokens = 3;
    in.max_tokens = max_tokens;
    return in;
  }

  FakeGeneration service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<GrpcClient> client_;
};

TEST_F(GrpcClientTest, ModelInfo) {
  auto info = client_->GetModelInfo(absl::Seconds(10));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name, "fake");
  EXPECT_EQ(info->vocab_size, 1000);
  EXPECT_EQ(info->eos_token_ids, (std::vector<int32_t>{2}));
}

TEST_F(GrpcClientTest, ManyStreamsInFlightAllComplete) {
  constexpr int kStreams = 64;
  std::vector<std::promise<RequestOutcome>> done(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    client_->Send(Prompt(10 + i, 5),
                  [&done, i](RequestOutcome o) { done[i].set_value(std::move(o)); });
  }
  for (int i = 0; i < kStreams; ++i) {
    const RequestOutcome o = done[i].get_future().get();
    EXPECT_TRUE(o.success) << o.error;
    EXPECT_EQ(o.chunk_ns.size(), 5u);
    EXPECT_EQ(o.output_tokens, 5);
    EXPECT_EQ(o.input_tokens, 3);
    ASSERT_EQ(o.stages.size(), 1u);
    EXPECT_EQ(o.stages[0].stage, "decode.generate");
  }
}

TEST_F(GrpcClientTest, RejectedCallIsAFailureNotACancel) {
  std::promise<RequestOutcome> p;
  client_->Send(Prompt(1, 5), [&](RequestOutcome o) { p.set_value(std::move(o)); });
  const RequestOutcome o = p.get_future().get();
  EXPECT_FALSE(o.success);
  EXPECT_FALSE(o.cancelled);
  EXPECT_NE(o.error.find("queue full"), std::string::npos) << o.error;
}

TEST_F(GrpcClientTest, CancelAllEndsHangingStreams) {
  constexpr int kStreams = 8;
  std::vector<std::promise<RequestOutcome>> done(kStreams);
  std::vector<std::future<RequestOutcome>> futures;
  for (auto& d : done) futures.push_back(d.get_future());
  for (int i = 0; i < kStreams; ++i) {
    client_->Send(Prompt(0, 5), [&done, i](RequestOutcome o) { done[i].set_value(std::move(o)); });
  }
  client_->CancelAll();
  for (auto& f : futures) {
    const RequestOutcome o = f.get();
    EXPECT_TRUE(o.cancelled) << o.error;
    EXPECT_FALSE(o.success);
  }
}

TEST_F(GrpcClientTest, DestroyingTheClientCancelsWhatIsInFlight) {
  std::promise<RequestOutcome> p;
  auto f = p.get_future();
  client_->Send(Prompt(0, 5), [&](RequestOutcome o) { p.set_value(std::move(o)); });
  client_.reset();
  EXPECT_TRUE(f.get().cancelled);
}

}  // namespace
}  // namespace pdserve::loadgen
