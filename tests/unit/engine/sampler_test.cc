#include "engine/sampler.h"

#include <cmath>
#include <limits>
#include <map>

#include "gtest/gtest.h"

namespace pdserve {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f}; }

SampleResult Draw(SamplingParams p, uint64_t seed, std::vector<float> l = Logits()) {
  Sampler s(p, seed);
  return s.Sample(l.data(), static_cast<int32_t>(l.size()));
}

TEST(Sampler, GreedyPicksTheArgmax) {
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(Draw(p, 1).token, 1);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  SamplingParams p;
  p.top_k = 1;
  for (uint64_t seed = 0; seed < 20; ++seed) EXPECT_EQ(Draw(p, seed).token, 1);
  SamplingParams q;
  q.top_p = 1e-6f;
  for (uint64_t seed = 0; seed < 20; ++seed) EXPECT_EQ(Draw(q, seed).token, 1);
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.min_p = 0.5f;  // keeps tokens with p >= 0.5 * p(best): ids 1 and 4 (and not 2: e^-1 < 0.5)
  std::map<TokenId, int> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) seen[Draw(p, seed).token]++;
  for (const auto& [t, n] : seen) EXPECT_TRUE(t == 1 || t == 4) << t;
  EXPECT_EQ(seen.size(), 2u);
}

TEST(Sampler, FollowsTheSoftmaxDistribution) {
  SamplingParams p;  // temperature 1, no truncation
  p.top_p = 1;
  std::vector<int> counts(6, 0);
  Sampler s(p, 123);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = Logits();
    counts[s.Sample(l.data(), 6).token]++;
  }
  std::vector<float> l = Logits();
  double z = 0;
  for (float v : l) z += std::exp(v);
  for (int i = 0; i < 6; ++i) {
    const double want = std::exp(l[i]) / z;
    EXPECT_NEAR(counts[i] / static_cast<double>(n), want, 0.015) << i;
  }
}

TEST(Sampler, TemperatureSharpens) {
  SamplingParams cold;
  cold.temperature = 0.01f;  // 0.1 logit gap -> e^-10
  for (uint64_t seed = 0; seed < 50; ++seed) EXPECT_EQ(Draw(cold, seed).token, 1);
}

TEST(Sampler, SameSeedSameTokens) {
  SamplingParams p;
  p.seed = 99;
  std::vector<TokenId> a, b;
  Sampler s1(p, 1), s2(p, 2);  // the request seed wins over the fallback
  for (int i = 0; i < 32; ++i) {
    std::vector<float> l1 = Logits(), l2 = Logits();
    a.push_back(s1.Sample(l1.data(), 6).token);
    b.push_back(s2.Sample(l2.data(), 6).token);
  }
  EXPECT_EQ(a, b);
}

// A sampler that skips n samples draws what one that sampled n times would
// draw next, including after a sample whose logits were all non-finite.
TEST(Sampler, SkipSamplesContinuesTheSeededStream) {
  SamplingParams p;
  p.seed = 5;
  std::vector<TokenId> whole;
  Sampler s(p, 0);
  for (int i = 0; i < 24; ++i) {
    std::vector<float> l = Logits();
    if (i == 3) l.assign(6, std::numeric_limits<float>::infinity());
    whole.push_back(s.Sample(l.data(), 6).token);
  }
  for (int k : {1, 4, 23}) {
    Sampler rest(p, 0);
    rest.SkipSamples(k);
    for (int i = k; i < 24; ++i) {
      std::vector<float> l = Logits();
      if (i == 3) l.assign(6, std::numeric_limits<float>::infinity());
      EXPECT_EQ(rest.Sample(l.data(), 6).token, whole[i]) << "skipped " << k << ", sample " << i;
    }
  }
  // Greedy draws nothing: skipping is a no-op.
  SamplingParams g;
  g.temperature = 0;
  Sampler greedy(g, 0);
  greedy.SkipSamples(1000);
  std::vector<float> l = Logits();
  EXPECT_EQ(greedy.Sample(l.data(), 6).token, 1);
}

TEST(Sampler, PenaltiesDiscourageRepeats) {
  SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 2.0f;
  Sampler s(p, 1);
  std::vector<float> l = Logits();
  EXPECT_EQ(s.Sample(l.data(), 6).token, 1);
  s.AddGenerated(1);
  l = Logits();
  EXPECT_EQ(s.Sample(l.data(), 6).token, 4);  // 3 - 2 < 2.9

  SamplingParams r;
  r.temperature = 0;
  r.repetition_penalty = 2.0f;
  Sampler rs(r, 1);
  rs.AddPromptTokens({1});
  l = Logits();
  EXPECT_EQ(rs.Sample(l.data(), 6).token, 4);  // 3 / 2 < 2.9

  SamplingParams f;
  f.temperature = 0;
  f.frequency_penalty = 0.1f;
  Sampler fs(f, 1);
  for (int i = 0; i < 3; ++i) fs.AddGenerated(1);  // 3 - 0.3 < 2.9
  l = Logits();
  EXPECT_EQ(fs.Sample(l.data(), 6).token, 4);
}

TEST(Sampler, LogprobsAreOfTheRawDistribution) {
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = true;
  p.top_logprobs = 3;
  const SampleResult r = Draw(p, 1);
  std::vector<float> l = Logits();
  double z = 0;
  for (float v : l) z += std::exp(v);
  EXPECT_NEAR(r.logprob, l[1] - std::log(z), 1e-5);
  ASSERT_EQ(r.top.size(), 3u);
  EXPECT_EQ(r.top[0].token, 1);
  EXPECT_EQ(r.top[1].token, 4);
  EXPECT_EQ(r.top[2].token, 2);
  EXPECT_NEAR(r.top[1].logprob, l[4] - std::log(z), 1e-5);
}

TEST(Sampler, SubnormalTemperatureIsGreedyNotNaN) {
  // 1/T of a subnormal float is infinite: the weights used to be NaN and the
  // least likely token came out. Such a temperature means "greedy".
  for (float t : {1e-40f, std::numeric_limits<float>::denorm_min(), 1e-4f}) {
    SamplingParams p;
    p.temperature = t;
    p.logprobs = true;
    for (uint64_t seed = 0; seed < 10; ++seed) {
      const SampleResult r = Draw(p, seed);
      EXPECT_EQ(r.token, 1) << "temperature " << t;
      EXPECT_TRUE(std::isfinite(r.logprob));
    }
  }
}

TEST(Sampler, ExtremeButValidParametersSampleARealToken) {
  // Every combination the request edge lets through yields a token in range
  // with a finite logprob.
  for (float t : {kMinSamplingTemperature, 0.5f, 2.0f, 100.0f}) {
    for (float top_p : {1e-6f, 0.5f, 1.0f}) {
      for (float rp : {0.01f, 1.0f, 100.0f}) {
        SamplingParams p;
        p.temperature = t;
        p.top_p = top_p;
        p.repetition_penalty = rp;
        p.presence_penalty = 2;
        p.frequency_penalty = -2;
        p.min_p = 1;
        p.logprobs = true;
        p.top_logprobs = 20;
        Sampler s(p, 7);
        s.AddPromptTokens({0, 1, 2, 3, 4, 5});
        for (int step = 0; step < 5; ++step) {
          std::vector<float> l = Logits();
          const SampleResult r = s.Sample(l.data(), static_cast<int32_t>(l.size()));
          ASSERT_GE(r.token, 0);
          ASSERT_LT(r.token, 6);
          EXPECT_TRUE(std::isfinite(r.logprob)) << t << " " << top_p << " " << rp;
          s.AddGenerated(r.token);
        }
      }
    }
  }
}

TEST(Sampler, NonFiniteLogitsDoNotBreakSampling) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SamplingParams p;
  p.temperature = 1;
  p.top_p = 0.9f;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    // A NaN anywhere and a -inf tail: only the finite tokens can be drawn.
    const SampleResult r = Draw(p, seed, {nan, 3.0f, -inf, 2.0f, nan, -inf});
    EXPECT_TRUE(r.token == 1 || r.token == 3) << r.token;
    // An infinite logit has no distribution to sample: the argmax wins.
    EXPECT_EQ(Draw(p, seed, {1.0f, inf, 2.0f, nan, 0.0f, 0.0f}).token, 1);
  }
}

TEST(Rng, UniformInRangeAndDeterministic) {
  Rng a(5), b(5);
  for (int i = 0; i < 1000; ++i) {
    const double u = a.Uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    EXPECT_EQ(u, b.Uniform());
  }
}

// Structured outputs: the mask bans tokens, whatever the sampling settings.
TEST(Sampler, TokenMaskBansTokensGreedyAndSampled) {
  const uint32_t allow_0_2_5 = (1u << 0) | (1u << 2) | (1u << 5);
  SamplingParams greedy;
  greedy.temperature = 0;
  {
    Sampler s(greedy, 1);
    std::vector<float> l = Logits();
    EXPECT_EQ(s.Sample(l.data(), 6, &allow_0_2_5).token, 2);  // best allowed
  }
  SamplingParams p;
  p.top_k = 3;  // top-3 of the raw logits (1, 4, 2) holds only one allowed token
  std::map<TokenId, int> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Sampler s(p, seed);
    std::vector<float> l = Logits();
    seen[s.Sample(l.data(), 6, &allow_0_2_5).token]++;
  }
  for (const auto& [t, n] : seen) EXPECT_TRUE(t == 0 || t == 2 || t == 5) << t;
}

TEST(Sampler, TokenMaskKeepsTheModelsLogprobs) {
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = true;
  const uint32_t allow_2 = 1u << 2;
  Sampler s(p, 1);
  std::vector<float> l = Logits();
  SampleResult r = s.Sample(l.data(), 6, &allow_2);
  EXPECT_EQ(r.token, 2);
  std::vector<float> raw = Logits();
  double z = 0;
  for (float v : raw) z += std::exp(v);
  EXPECT_NEAR(r.logprob, raw[2] - std::log(z), 1e-5);
}

// The word-at-a-time mask against its one-bit-per-token reference.
TEST(Sampler, ApplyTokenMaskMatchesNaive) {
  Rng rng(7);
  for (int32_t n_vocab : {1, 31, 32, 33, 64, 100, 1000, 49152}) {
    std::vector<uint32_t> mask((n_vocab + 31) / 32);
    for (int pattern = 0; pattern < 4; ++pattern) {
      for (uint32_t& w : mask) {
        const uint64_t x = rng.Next();
        w = pattern == 0   ? 0u
            : pattern == 1 ? ~0u
            : pattern == 2 ? static_cast<uint32_t>(x)
                           : (x & 1 ? ~0u : 0u);
      }
      std::vector<float> a(n_vocab), b;
      for (int32_t i = 0; i < n_vocab; ++i) a[i] = static_cast<float>(rng.Uniform());
      b = a;
      ApplyTokenMask(a.data(), n_vocab, mask.data());
      ApplyTokenMaskNaive(b.data(), n_vocab, mask.data());
      ASSERT_EQ(a, b) << "n_vocab " << n_vocab << " pattern " << pattern;
    }
  }
}

}  // namespace
}  // namespace pdserve
