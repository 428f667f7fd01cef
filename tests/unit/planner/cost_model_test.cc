#include "planner/cost_model.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/planner/test_profiles.h"

namespace pdserve::planner {
namespace {

TEST(CostModelTest, ChunkAttentionPairsCountsCausalPositions) {
  EXPECT_EQ(ChunkAttentionPairs(0, 1), 1);
  EXPECT_EQ(ChunkAttentionPairs(0, 4), 1 + 2 + 3 + 4);
  EXPECT_EQ(ChunkAttentionPairs(10, 2), 11 + 12);
}

std::vector<StepSample> SamplesOf(const StepCost& truth) {
  std::vector<StepSample> samples;
  for (int64_t n : {16, 64, 256, 1024}) {
    for (int batch : {1, 4}) {
      StepShape s;
      s.prefill_tokens = n * batch;
      s.attention_pairs = batch * ChunkAttentionPairs(0, n);
      samples.push_back({s, truth.Seconds(s)});
    }
  }
  for (int b : {1, 8, 32}) {
    for (int64_t ctx : {32, 512, 2048}) {
      StepShape s;
      s.decode_seqs = b;
      s.decode_context = b * ctx;
      samples.push_back({s, truth.Seconds(s)});
    }
  }
  return samples;
}

TEST(CostModelTest, FitRecoversTheCoefficientsOfExactSamples) {
  const StepCost truth{0.004, 0.0009, 2e-8, 0.0011, 3e-7};
  absl::StatusOr<StepCost> fit = FitStepCost(SamplesOf(truth));
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_NEAR(fit->base_s, truth.base_s, 1e-6);
  EXPECT_NEAR(fit->prefill_token_s, truth.prefill_token_s, 1e-8);
  EXPECT_NEAR(fit->attention_pair_s, truth.attention_pair_s, 1e-11);
  EXPECT_NEAR(fit->decode_seq_s, truth.decode_seq_s, 1e-7);
  EXPECT_NEAR(fit->decode_context_token_s, truth.decode_context_token_s, 1e-10);
}

// A term the data contradicts (here: cost falling with context) is dropped
// rather than fitted negative, which would make long contexts free.
TEST(CostModelTest, FitNeverReturnsNegativeCoefficients) {
  std::vector<StepSample> samples = SamplesOf(StepCost{0.004, 0.001, 0, 0.001, 0});
  for (StepSample& s : samples) {
    if (s.shape.decode_seqs > 0) s.seconds -= 1e-8 * s.shape.decode_context;
  }
  absl::StatusOr<StepCost> fit = FitStepCost(samples);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->decode_context_token_s, 0);
  EXPECT_GE(fit->attention_pair_s, 0);
  EXPECT_GT(fit->prefill_token_s, 0);
}

TEST(CostModelTest, FitRejectsTooFewOrOneSidedSamples) {
  std::vector<StepSample> prefill_only;
  for (int64_t n : {16, 64, 256, 1024, 2048, 4096}) {
    StepShape s;
    s.prefill_tokens = n;
    prefill_only.push_back({s, 0.001 * n});
  }
  EXPECT_FALSE(FitStepCost(prefill_only).ok());
  EXPECT_FALSE(FitStepCost({}).ok());
  std::vector<StepSample> bad = SamplesOf(StepCost{0.004, 0.001, 0, 0.001, 0});
  bad[0].seconds = -1;
  EXPECT_FALSE(FitStepCost(bad).ok());
}

TEST(CostModelTest, ProfileRoundTripsThroughJson) {
  DeviceProfile p = HandProfile();
  p.step.attention_pair_s = 1.5e-9;
  p.notes["source"] = "test";
  const std::string path = std::string(::testing::TempDir()) + "/profile.json";
  ASSERT_TRUE(SaveProfile(p, path).ok());
  absl::StatusOr<DeviceProfile> back = LoadProfile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->name, p.name);
  EXPECT_EQ(back->kv_blocks, p.kv_blocks);
  EXPECT_EQ(back->step.attention_pair_s, p.step.attention_pair_s);
  EXPECT_EQ(back->link.bandwidth_bytes_per_s, p.link.bandwidth_bytes_per_s);
  EXPECT_EQ(back->notes["source"], "test");
  EXPECT_FALSE(back->step_co_run.has_value());
}

TEST(CostModelTest, CoRunStepCostRoundTripsThroughJson) {
  DeviceProfile p = HandProfile();
  p.step_co_run = StepCost{0.011, 0.0015, 0, 0.004, 1e-6};
  p.co_run_source = "measured beside a busy twin";
  absl::StatusOr<DeviceProfile> back =
      ProfileFromJson(nlohmann::json::parse(ProfileToJson(p).dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->step_co_run.has_value());
  EXPECT_EQ(back->step_co_run->base_s, 0.011);
  EXPECT_EQ(back->step_co_run->prefill_token_s, 0.0015);
  EXPECT_EQ(back->step_co_run->decode_seq_s, 0.004);
  EXPECT_EQ(back->step_co_run->decode_context_token_s, 1e-6);
  EXPECT_EQ(back->co_run_source, p.co_run_source);

  nlohmann::json j = nlohmann::json::parse(ProfileToJson(p).dump());
  j["step_co_run"]["decode_seq_s"] = -0.001;
  absl::StatusOr<DeviceProfile> bad = ProfileFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("step_co_run.decode_seq_s"), std::string::npos)
      << bad.status();
}

// The hand profile's step is 10 ms + 1 ms a prompt token + 2 ms a decode
// sequence; beside another node it is 10 ms + 1.5 ms + 4 ms:
//   100 prompt tokens: 110 ms alone, 160 ms co-run: 160/110
//   4 decode sequences: 18 ms alone, 26 ms co-run: 26/18
// A co-run cost below the alone one (noise in two fits) is no speed-up: 1.
TEST(CostModelTest, CoRunSlowdownIsTheRatioOfTheTwoStepCosts) {
  DeviceProfile p = HandProfile();
  StepShape prefill, decode;
  prefill.prefill_tokens = 100;
  decode.decode_seqs = 4;
  EXPECT_EQ(CoRunSlowdown(p, prefill), 1.0);  // no co-run cost: no slowdown
  p.step_co_run = StepCost{0.010, 0.0015, 0, 0.004, 0};
  EXPECT_NEAR(CoRunSlowdown(p, prefill), 0.160 / 0.110, 1e-12);
  EXPECT_NEAR(CoRunSlowdown(p, decode), 0.026 / 0.018, 1e-12);
  p.step_co_run = StepCost{0.005, 0.001, 0, 0.002, 0};
  EXPECT_EQ(CoRunSlowdown(p, prefill), 1.0);
}

TEST(CostModelTest, PostPrefillExtraFadesAndSparesLargeBatches) {
  const PostPrefillCost c{0.004, 0.05, 4};
  EXPECT_DOUBLE_EQ(c.ExtraSeconds(0, 1), 0.004);
  EXPECT_DOUBLE_EQ(c.ExtraSeconds(-1, 4), 0.004);  // a step cannot start before the prefill ended
  EXPECT_NEAR(c.ExtraSeconds(0.05, 2), 0.004 / std::exp(1.0), 1e-15);
  EXPECT_EQ(c.ExtraSeconds(0, 5), 0.0);  // larger than measured: compute-bound, unaffected
  EXPECT_EQ(c.ExtraSeconds(std::numeric_limits<double>::infinity(), 1), 0.0);  // never prefilled
  EXPECT_EQ((PostPrefillCost{0, 0.05, 4}).ExtraSeconds(0, 1), 0.0);
}

// Steps timed after a prefill, made from a known cost on the fit's grid of
// decays (1 ms x 10^(g/40)) at batches 1 and 4, and with no extra at
// batches 8 and 16: the fit gives the cost back and stops at batch 4.
// Without any extra, nothing is fitted; a batch showing it above one that
// does not is not counted.
TEST(CostModelTest, PostPrefillFitRecoversExcessDecayAndBatchLimit) {
  const StepCost steady{0.004, 0.001, 0, 0.0005, 2e-6};
  const PostPrefillCost truth{0.0035, 1e-3 * std::pow(10.0, 68 / 40.0), 4};  // ~50 ms
  std::vector<PostPrefillSample> samples, flat;
  for (int batch : {1, 4, 8, 16}) {
    double since = 0;
    for (int i = 0; i < 8; ++i) {
      StepShape shape;
      shape.decode_seqs = batch;
      shape.decode_context = batch * (100 + i);
      const double s = steady.Seconds(shape);
      const double extra = batch <= 4 ? truth.ExtraSeconds(since, batch) : 0.0;
      samples.push_back({shape, since, s + extra, s});
      flat.push_back({shape, since, s, s});
      since += s + extra;
    }
  }
  absl::StatusOr<PostPrefillCost> fit = FitPostPrefillCost(samples);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_NEAR(fit->excess_s, truth.excess_s, 1e-12);
  EXPECT_NEAR(fit->decay_s, truth.decay_s, 1e-12);
  EXPECT_EQ(fit->max_decode_seqs, 4);

  fit = FitPostPrefillCost(flat);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->excess_s, 0.0);
  EXPECT_EQ(fit->max_decode_seqs, 0);

  // Batch 1 unaffected: batch 4's extra alone does not start the range.
  std::vector<PostPrefillSample> gap = samples;
  for (PostPrefillSample& x : gap) {
    if (x.shape.decode_seqs == 1) x.seconds = x.steady_s;
  }
  fit = FitPostPrefillCost(gap);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->max_decode_seqs, 0);

  EXPECT_FALSE(FitPostPrefillCost({samples[0]}).ok());
  samples[3].seconds = -1;
  EXPECT_FALSE(FitPostPrefillCost(samples).ok());
  samples[3].seconds = 0.01;
  samples[3].shape.prefill_tokens = 16;  // not a decode-only step
  EXPECT_FALSE(FitPostPrefillCost(samples).ok());
}

// Steps that all run 2 ms over their steady time across the whole window
// (as when a VM slowed down between the steady and the post-prefill steps):
// the fit's fade stops at the window the samples span (what was seen), not
// at the grid's 10 s, and a real fade inside the window is still found.
TEST(CostModelTest, PostPrefillFitDecayStopsAtTheWindow) {
  std::vector<PostPrefillSample> drift;
  double since = 0;
  for (int i = 0; i < 32; ++i) {
    StepShape shape;
    shape.decode_seqs = 1;
    shape.decode_context = 500 + i;
    drift.push_back({shape, since, 0.007, 0.005});
    since += 0.007;
  }
  const double window_s = drift.back().since_s;  // 0.217 s
  absl::StatusOr<PostPrefillCost> fit = FitPostPrefillCost(drift);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->max_decode_seqs, 1);
  EXPECT_LE(fit->decay_s, window_s);
  EXPECT_GT(fit->decay_s, window_s / std::pow(10.0, 1 / 40.0) - 1e-12);  // the grid point below it
  // A short fade well inside the same window is unaffected by the limit.
  const PostPrefillCost truth{0.003, 1e-3 * std::pow(10.0, 60 / 40.0), 1};  // ~32 ms
  for (PostPrefillSample& x : drift) x.seconds = x.steady_s + truth.ExtraSeconds(x.since_s, 1);
  fit = FitPostPrefillCost(drift);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_NEAR(fit->excess_s, truth.excess_s, 1e-12);
  EXPECT_NEAR(fit->decay_s, truth.decay_s, 1e-12);
}

TEST(CostModelTest, PostPrefillCostRoundTripsThroughJson) {
  DeviceProfile p = HandProfile();
  p.post_prefill = PostPrefillCost{0.0045, 0.12, 4};
  p.post_prefill_source = "decode steps timed after a prefill";
  absl::StatusOr<DeviceProfile> back =
      ProfileFromJson(nlohmann::json::parse(ProfileToJson(p).dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->post_prefill.has_value());
  EXPECT_EQ(back->post_prefill->excess_s, 0.0045);
  EXPECT_EQ(back->post_prefill->decay_s, 0.12);
  EXPECT_EQ(back->post_prefill->max_decode_seqs, 4);
  EXPECT_EQ(back->post_prefill_source, p.post_prefill_source);

  nlohmann::json j = nlohmann::json::parse(ProfileToJson(p).dump());
  j["post_prefill"]["decay_s"] = 0;
  absl::StatusOr<DeviceProfile> bad = ProfileFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("post_prefill.decay_s"), std::string::npos) << bad.status();
  j = nlohmann::json::parse(ProfileToJson(p).dump());
  j["post_prefill"]["excess_s"] = -0.1;
  EXPECT_FALSE(ProfileFromJson(j).ok());
  j = nlohmann::json::parse(ProfileToJson(p).dump());
  j["post_prefill"].erase("max_decode_seqs");
  EXPECT_FALSE(ProfileFromJson(j).ok());
}

TEST(CostModelTest, PostPeerPrefillCostRoundTripsThroughJson) {
  DeviceProfile p = HandProfile();
  p.post_peer_prefill = PostPrefillCost{0.003, 0.05, 4};
  p.post_peer_prefill_source = "decode steps timed after a peer's prefill";
  absl::StatusOr<DeviceProfile> back =
      ProfileFromJson(nlohmann::json::parse(ProfileToJson(p).dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->post_prefill.has_value());
  ASSERT_TRUE(back->post_peer_prefill.has_value());
  EXPECT_EQ(back->post_peer_prefill->excess_s, 0.003);
  EXPECT_EQ(back->post_peer_prefill->decay_s, 0.05);
  EXPECT_EQ(back->post_peer_prefill->max_decode_seqs, 4);
  EXPECT_EQ(back->post_peer_prefill_source, p.post_peer_prefill_source);

  nlohmann::json j = nlohmann::json::parse(ProfileToJson(p).dump());
  j["post_peer_prefill"]["decay_s"] = -1;
  absl::StatusOr<DeviceProfile> bad = ProfileFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("post_peer_prefill.decay_s"), std::string::npos)
      << bad.status();
  j = nlohmann::json::parse(ProfileToJson(p).dump());
  j["post_peer_prefill"] = 3;
  bad = ProfileFromJson(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("\"post_peer_prefill\" must be an object"),
            std::string::npos)
      << bad.status();
}

TEST(CostModelTest, BadProfilesSayWhatIsWrong) {
  nlohmann::json j = nlohmann::json::parse(ProfileToJson(HandProfile()).dump());
  j["kv_blocks"] = 0;
  absl::StatusOr<DeviceProfile> p = ProfileFromJson(j);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("kv_blocks"), std::string::npos) << p.status();

  j = nlohmann::json::parse(ProfileToJson(HandProfile()).dump());
  j["step"]["decode_seq_s"] = -1;
  p = ProfileFromJson(j);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("decode_seq_s"), std::string::npos) << p.status();

  j = nlohmann::json::parse(ProfileToJson(HandProfile()).dump());
  j["n_layers"] = "thirty";
  EXPECT_FALSE(ProfileFromJson(j).ok());
  j = nlohmann::json::parse(ProfileToJson(HandProfile()).dump());
  j.erase("step");
  EXPECT_FALSE(ProfileFromJson(j).ok());

  const std::string path = std::string(::testing::TempDir()) + "/garbage.json";
  std::ofstream(path) << "{not json";
  EXPECT_FALSE(LoadProfile(path).ok());
  EXPECT_EQ(LoadProfile(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace pdserve::planner
