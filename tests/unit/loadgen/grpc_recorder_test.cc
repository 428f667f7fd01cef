#include <gtest/gtest.h>

#include "loadgen/grpc_client.h"

namespace pdserve::loadgen {
namespace {

v1::GenerateResponse ChunkOf(std::vector<int32_t> ids, const std::string& text) {
  v1::GenerateResponse r;
  for (int32_t id : ids) r.mutable_chunk()->add_token_ids(id);
  r.mutable_chunk()->set_text(text);
  return r;
}

v1::GenerateResponse CompleteWith(int prompt, int completion) {
  v1::GenerateResponse r;
  v1::Complete* c = r.mutable_complete();
  c->set_finish_reason(v1::FINISH_REASON_LENGTH);
  c->mutable_usage()->set_prompt_tokens(prompt);
  c->mutable_usage()->set_completion_tokens(completion);
  c->mutable_usage()->set_cached_prompt_tokens(16);
  v1::StageTiming* t = c->mutable_timings()->add_stages();
  t->set_stage("prefill.compute");
  t->set_duration_ns(1234);
  return r;
}

TEST(GenerateStreamRecorderTest, ChunksTimesUsageAndStages) {
  GenerateStreamRecorder rec;
  rec.OnResponse(ChunkOf({5}, "a"), 100);
  rec.OnResponse(ChunkOf({}, ""), 150);  // nothing in it: not a token chunk
  rec.OnResponse(ChunkOf({6, 7}, "bc"), 200);
  rec.OnResponse(CompleteWith(32, 3), 210);
  RequestOutcome out;
  rec.Finish(grpc::Status::OK, false, &out);
  EXPECT_TRUE(out.success) << out.error;
  EXPECT_EQ(out.chunk_ns, (std::vector<int64_t>{100, 200}));
  EXPECT_EQ(out.output_tokens, 3);
  EXPECT_TRUE(out.output_tokens_from_usage);
  EXPECT_EQ(out.input_tokens, 32);
  EXPECT_EQ(out.cached_input_tokens, 16);
  EXPECT_TRUE(out.cached_input_tokens_reported);
  ASSERT_EQ(out.stages.size(), 1u);
  EXPECT_EQ(out.stages[0].stage, "prefill.compute");
  EXPECT_EQ(out.stages[0].duration_ns, 1234);
}

TEST(GenerateStreamRecorderTest, ErrorEventFailsTheRequest) {
  GenerateStreamRecorder rec;
  rec.OnResponse(ChunkOf({5}, "a"), 100);
  v1::GenerateResponse err;
  err.mutable_error()->set_kind("kv_transfer");
  err.mutable_error()->set_message("peer gone");
  rec.OnResponse(err, 120);
  RequestOutcome out;
  rec.Finish(grpc::Status::OK, false, &out);
  EXPECT_FALSE(out.success);
  EXPECT_EQ(out.error, "kv_transfer: peer gone");
  EXPECT_EQ(out.output_tokens, 1);  // counted from chunks: no usage came
  EXPECT_FALSE(out.output_tokens_from_usage);
  EXPECT_FALSE(out.cached_input_tokens_reported);  // 0 cached would be a claim nobody made
}

TEST(GenerateStreamRecorderTest, CancelledByUsVersusFailedCall) {
  {
    GenerateStreamRecorder rec;
    RequestOutcome out;
    rec.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"), true, &out);
    EXPECT_TRUE(out.cancelled);
    EXPECT_FALSE(out.success);
  }
  {
    GenerateStreamRecorder rec;
    RequestOutcome out;
    rec.Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full"), false, &out);
    EXPECT_FALSE(out.cancelled);
    EXPECT_FALSE(out.success);
    EXPECT_NE(out.error.find("queue full"), std::string::npos);
  }
  {
    GenerateStreamRecorder rec;  // OK status but no complete
    RequestOutcome out;
    rec.Finish(grpc::Status::OK, false, &out);
    EXPECT_FALSE(out.success);
  }
}

}  // namespace
}  // namespace pdserve::loadgen
