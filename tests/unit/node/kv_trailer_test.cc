// Token #1 from the prefill node to the decode node: what the decode node
// accepts from a peer's KV trailer.
#include "node/events/kv_trailer.h"

#include <climits>
#include <string>

#include "gtest/gtest.h"

namespace pdserve::node {
namespace {

constexpr int32_t kVocab = 100;

TEST(KvTrailerTest, CarriesTokenOneOfEverySample) {
  SeqOutput out;
  out.tokens = {7};
  absl::StatusOr<std::vector<TokenId>> one =
      ParseKvTrailer(MakeKvTrailer(out).SerializeAsString(), kVocab);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(*one, std::vector<TokenId>{7});

  out.samples.resize(3);
  out.samples[0].token = 7;
  out.samples[1].token = 0;
  out.samples[2].token = 99;
  absl::StatusOr<std::vector<TokenId>> three =
      ParseKvTrailer(MakeKvTrailer(out).SerializeAsString(), kVocab);
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(*three, (std::vector<TokenId>{7, 0, 99}));
}

// A prefill node of the previous release sent its PrefillResponse here: the
// field numbers match, so a rolling update keeps serving.
TEST(KvTrailerTest, ReadsWhatAnOlderPrefillNodeSent) {
  v1::PrefillResponse old;
  old.set_token_id(5);
  old.set_text("hello");
  old.set_logprob(-0.5f);
  old.set_cached_prompt_tokens(16);
  old.add_stages()->set_stage("prefill.compute");
  absl::StatusOr<std::vector<TokenId>> one = ParseKvTrailer(old.SerializeAsString(), kVocab);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(*one, std::vector<TokenId>{5});

  for (int32_t t : {5, 6}) {
    v1::PrefillResponse::Sample* x = old.add_samples();
    x->set_token_id(t);
    x->set_text("x");
  }
  absl::StatusOr<std::vector<TokenId>> two = ParseKvTrailer(old.SerializeAsString(), kVocab);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(*two, (std::vector<TokenId>{5, 6}));
}

TEST(KvTrailerTest, RefusesATokenOutsideTheVocabulary) {
  for (int32_t bad : {-1, kVocab, INT_MAX, INT_MIN}) {
    v1::KvTrailer t;
    t.set_token_id(bad);
    absl::StatusOr<std::vector<TokenId>> got = ParseKvTrailer(t.SerializeAsString(), kVocab);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(got.status().message().find("token #1"), std::string::npos) << got.status();

    v1::KvTrailer samples;
    samples.add_samples()->set_token_id(1);
    samples.add_samples()->set_token_id(bad);
    EXPECT_EQ(ParseKvTrailer(samples.SerializeAsString(), kVocab).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(KvTrailerTest, MalformedBytesAreDataLoss) {
  for (const std::string& bytes : {std::string("\xff\xff\xff", 3),
                                   std::string("\x0a\x05"
                                               "ab",
                                               4),
                                   std::string(1, '\x08')}) {
    absl::StatusOr<std::vector<TokenId>> got = ParseKvTrailer(bytes, kVocab);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  }
}

}  // namespace
}  // namespace pdserve::node
