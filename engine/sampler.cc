#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pdserve {
namespace {
uint64_t SplitMix64(uint64_t* x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// log(sum(exp(x))) over all logits, stable.
double LogSumExp(const float* x, int32_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int32_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i] - mx));
  return mx + std::log(sum);
}
// NaN breaks the strict weak order std::partial_sort relies on: it sorts as -inf.
float Sortable(float logit) {
  return std::isnan(logit) ? -std::numeric_limits<float>::infinity() : logit;
}
}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t& s : s_) s = SplitMix64(&seed);
}

uint64_t Rng::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

double Rng::Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

TokenId Argmax(const float* logits, int32_t n_vocab) {
  TokenId best = 0;
  for (int32_t i = 1; i < n_vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

void ApplyTokenMask(float* logits, int32_t n_vocab, const uint32_t* allowed) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int32_t n_words = (n_vocab + 31) / 32;
  for (int32_t w = 0; w < n_words; ++w) {
    uint32_t banned = ~allowed[w];
    if (banned == 0) continue;  // structured outputs mostly allow or ban whole words
    const int32_t base = w * 32;
    if (banned == ~0u && base + 32 <= n_vocab) {
      std::fill(logits + base, logits + base + 32, kNegInf);
      continue;
    }
    while (banned != 0) {
      const int32_t t = base + __builtin_ctz(banned);
      if (t < n_vocab) logits[t] = kNegInf;
      banned &= banned - 1;
    }
  }
}

void ApplyTokenMaskNaive(float* logits, int32_t n_vocab, const uint32_t* allowed) {
  for (int32_t t = 0; t < n_vocab; ++t) {
    if (((allowed[t / 32] >> (t % 32)) & 1u) == 0) {
      logits[t] = -std::numeric_limits<float>::infinity();
    }
  }
}

Sampler::Sampler(const SamplingParams& params, uint64_t seed)
    : params_(params), rng_(params.seed.value_or(seed)) {}

void Sampler::AddPromptTokens(const std::vector<TokenId>& tokens) {
  if (params_.repetition_penalty == 1.0f) return;
  seen_.insert(tokens.begin(), tokens.end());
}

void Sampler::AddGenerated(TokenId token) {
  if (params_.repetition_penalty != 1.0f) seen_.insert(token);
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) ++generated_[token];
}

void Sampler::SkipSamples(int64_t n_samples) {
  if (!(params_.temperature >= kMinSamplingTemperature)) return;
  for (int64_t i = 0; i < n_samples; ++i) rng_.Next();
}

void Sampler::ApplyPenalties(float* logits, int32_t n_vocab) const {
  // Repetition penalty as in CTRL / HF: shrink positive logits, grow negative.
  const float rp = params_.repetition_penalty;
  if (rp != 1.0f) {
    for (TokenId t : seen_) {
      if (t < 0 || t >= n_vocab) continue;
      logits[t] = logits[t] > 0 ? logits[t] / rp : logits[t] * rp;
    }
  }
  // Presence and frequency penalties as in the OpenAI API.
  for (const auto& [t, count] : generated_) {
    if (t < 0 || t >= n_vocab) continue;
    logits[t] -= params_.presence_penalty + params_.frequency_penalty * count;
  }
}

SampleResult Sampler::Sample(float* logits, int32_t n_vocab, const uint32_t* allowed) {
  SampleResult r;
  // Log-probabilities describe the model's raw distribution (before
  // penalties and temperature), as OpenAI-style APIs report them.
  const bool want_logprobs = params_.logprobs || params_.top_logprobs > 0;
  double lse = 0;
  if (want_logprobs) {
    lse = LogSumExp(logits, n_vocab);
    if (params_.top_logprobs > 0) {
      const int32_t k = std::min(params_.top_logprobs, n_vocab);
      candidates_.clear();
      for (int32_t i = 0; i < n_vocab; ++i) candidates_.emplace_back(Sortable(logits[i]), i);
      std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(),
                        [](const auto& a, const auto& b) {
                          return a.first > b.first || (a.first == b.first && a.second < b.second);
                        });
      for (int32_t i = 0; i < k; ++i) {
        r.top.push_back({candidates_[i].second, static_cast<float>(candidates_[i].first - lse)});
      }
    }
  }
  const bool penalized =
      (params_.repetition_penalty != 1.0f && !seen_.empty()) ||
      ((params_.presence_penalty != 0 || params_.frequency_penalty != 0) && !generated_.empty());
  std::vector<float> raw_saved;  // raw logits, kept only when penalties change them
  if (penalized && want_logprobs) raw_saved.assign(logits, logits + n_vocab);
  if (penalized) ApplyPenalties(logits, n_vocab);
  if (allowed != nullptr) {
    if (want_logprobs && raw_saved.empty()) raw_saved.assign(logits, logits + n_vocab);
    ApplyTokenMask(logits, n_vocab, allowed);
  }

  auto finish = [&](TokenId t) {
    r.token = t;
    if (want_logprobs) {
      r.logprob = static_cast<float>((raw_saved.empty() ? logits[t] : raw_saved[t]) - lse);
    }
    return r;
  };
  // Below kMinSamplingTemperature 1/T overflows float and the weights become
  // NaN; such a distribution is the argmax anyway. NaN compares false: greedy too.
  if (!(params_.temperature >= kMinSamplingTemperature)) return finish(Argmax(logits, n_vocab));

  // Candidates sorted by logit, descending; keep only what top-k allows.
  candidates_.clear();
  candidates_.reserve(n_vocab);
  for (int32_t i = 0; i < n_vocab; ++i) candidates_.emplace_back(Sortable(logits[i]), i);
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int32_t n = n_vocab;
  if (params_.top_k > 0 && params_.top_k < n) n = params_.top_k;
  // Sort lazily: grow the sorted prefix only as far as top-p needs it.
  int32_t sorted = std::min<int32_t>(n, 64);
  std::partial_sort(candidates_.begin(), candidates_.begin() + sorted,
                    candidates_.begin() + n_vocab, by_logit);

  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  const float max_logit = candidates_[0].first;
  // A logit that is NaN or infinite (a broken model, an extreme penalty) has
  // no probability to sample from: fall back to the argmax.
  if (!std::isfinite(max_logit)) {
    rng_.Next();  // one draw per sample all the same (SkipSamples relies on it)
    return finish(Argmax(logits, n_vocab));
  }
  // Unnormalized probability of a candidate; NaN (a NaN logit in the tail)
  // and -inf logits weigh 0.
  auto weight = [&](float logit) {
    const double w = std::exp((static_cast<double>(logit) - max_logit) * inv_t);
    return w >= 0 ? w : 0.0;
  };
  // Unnormalized probabilities over all n candidates (the unsorted tail too).
  double total = 0;
  for (int32_t i = 0; i < n; ++i) total += weight(candidates_[i].first);
  if (params_.top_k > 0 && params_.top_k < n_vocab) {
    // candidates_[0, n) must be exactly the top-k set: sort fully up to n.
    if (sorted < n) {
      std::partial_sort(candidates_.begin(), candidates_.begin() + n, candidates_.begin() + n_vocab,
                        by_logit);
      sorted = n;
      total = 0;
      for (int32_t i = 0; i < n; ++i) total += weight(candidates_[i].first);
    }
  }

  // top-p: smallest prefix whose mass reaches top_p.
  int32_t keep = n;
  if (params_.top_p < 1.0f) {
    double cum = 0;
    int32_t i = 0;
    for (;; ++i) {
      if (i == sorted) {
        const int32_t grow = std::min<int32_t>(n, sorted * 4);
        std::partial_sort(candidates_.begin() + sorted, candidates_.begin() + grow,
                          candidates_.begin() + n, by_logit);
        sorted = grow;
      }
      if (i >= n) break;
      cum += weight(candidates_[i].first) / total;
      if (cum >= params_.top_p) {
        ++i;
        break;
      }
    }
    keep = std::max<int32_t>(1, std::min(i, n));
  }
  // min-p: drop tokens less likely than min_p times the most likely one.
  if (params_.min_p > 0.0f) {
    if (sorted < keep) {
      std::partial_sort(candidates_.begin() + sorted, candidates_.begin() + keep,
                        candidates_.begin() + n, by_logit);
      sorted = keep;
    }
    const float threshold = max_logit + params_.temperature * std::log(params_.min_p);
    int32_t i = 1;
    while (i < keep && candidates_[i].first >= threshold) ++i;
    keep = i;
  }

  double mass = 0;
  for (int32_t i = 0; i < keep; ++i) mass += weight(candidates_[i].first);
  const double u = rng_.Uniform() * mass;
  double cum = 0;
  TokenId chosen = candidates_[keep - 1].second;
  for (int32_t i = 0; i < keep; ++i) {
    cum += weight(candidates_[i].first);
    if (u < cum) {
      chosen = candidates_[i].second;
      break;
    }
  }
  return finish(chosen);
}

}  // namespace pdserve
