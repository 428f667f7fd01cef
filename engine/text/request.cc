#include "engine/text/request.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace pdserve {

uint64_t SampleSeed(uint64_t seed, int32_t index) {
  if (index == 0) return seed;
  // splitmix64's finalizer over the seed and the index.
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(index);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

absl::Status ValidateRequest(const RequestSpec& spec, const RequestLimits& limits) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  const int64_t n_prompt = static_cast<int64_t>(spec.prompt.size());
  if (n_prompt == 0) return bad("prompt is empty");
  if (n_prompt >= limits.n_ctx) {
    return bad("prompt has ", n_prompt, " tokens; the context holds ", limits.n_ctx,
               " (prompt plus at least one generated token)");
  }
  for (TokenId t : spec.prompt) {
    if (t < 0 || t >= limits.n_vocab) {
      return bad("prompt token id ", t, " is outside the vocabulary [0, ", limits.n_vocab, ")");
    }
  }
  if (spec.n_resumed < 0 || spec.n_resumed >= n_prompt) {
    return bad("n_resumed (", spec.n_resumed, ") must be in [0, prompt tokens (", n_prompt,
               ")): at least one prompt token precedes the resumed ones");
  }
  if (spec.sampling.n < 1 || spec.sampling.n > kMaxSamples) {
    return bad("n (samples) must be in [1, ", kMaxSamples, "], got ", spec.sampling.n);
  }
  if (spec.sampling.n > 1 && spec.n_resumed > 0) {
    return bad("a resumed request cannot have n > 1 samples");
  }
  const StopParams& st = spec.stop;
  if (st.max_tokens < 1) return bad("max_tokens must be at least 1, got ", st.max_tokens);
  if (n_prompt + st.max_tokens > limits.n_ctx) {
    return bad("prompt (", n_prompt, " tokens) + max_tokens (", st.max_tokens,
               ") exceeds the context length ", limits.n_ctx);
  }
  if (static_cast<int32_t>(st.stop_strings.size()) > limits.max_stop_strings) {
    return bad("at most ", limits.max_stop_strings, " stop strings, got ", st.stop_strings.size());
  }
  for (const std::string& s : st.stop_strings) {
    if (s.empty()) return bad("stop strings must not be empty");
    if (static_cast<int32_t>(s.size()) > limits.max_stop_string_bytes) {
      return bad("stop string longer than ", limits.max_stop_string_bytes, " bytes");
    }
    if (!IsValidUtf8(s)) return bad("stop string is not valid UTF-8");
  }
  if (st.stop_token_ids.size() > static_cast<size_t>(kMaxStopTokenIds)) {
    return bad("at most ", kMaxStopTokenIds, " stop_token_ids, got ", st.stop_token_ids.size());
  }
  for (TokenId t : st.stop_token_ids) {
    if (t < 0 || t >= limits.n_vocab) {
      return bad("stop token id ", t, " is outside the vocabulary [0, ", limits.n_vocab, ")");
    }
  }
  const SamplingParams& s = spec.sampling;
  if (!std::isfinite(s.temperature) ||
      (s.temperature != 0 &&
       !(s.temperature >= kMinSamplingTemperature && s.temperature <= kMaxSamplingTemperature))) {
    return bad("temperature must be 0 (greedy) or in [", kMinSamplingTemperature, ", ",
               kMaxSamplingTemperature, "], got ", s.temperature);
  }
  if (!std::isfinite(s.top_p) || !(s.top_p > 0 && s.top_p <= 1)) {
    return bad("top_p must be in (0, 1], got ", s.top_p);
  }
  if (s.top_k < 0 || s.top_k > kMaxTopK) {
    return bad("top_k must be >= 0 (0 disables it) and at most ", kMaxTopK, ", got ", s.top_k);
  }
  if (!std::isfinite(s.min_p) || s.min_p < 0 || s.min_p > 1) {
    return bad("min_p must be in [0, 1], got ", s.min_p);
  }
  if (!std::isfinite(s.repetition_penalty) || s.repetition_penalty < kMinRepetitionPenalty ||
      s.repetition_penalty > kMaxRepetitionPenalty) {
    return bad("repetition_penalty must be in [", kMinRepetitionPenalty, ", ",
               kMaxRepetitionPenalty, "] (1 disables it), got ", s.repetition_penalty);
  }
  if (!std::isfinite(s.presence_penalty) || std::fabs(s.presence_penalty) > 2) {
    return bad("presence_penalty must be in [-2, 2], got ", s.presence_penalty);
  }
  if (!std::isfinite(s.frequency_penalty) || std::fabs(s.frequency_penalty) > 2) {
    return bad("frequency_penalty must be in [-2, 2], got ", s.frequency_penalty);
  }
  if (s.top_logprobs < 0 || s.top_logprobs > limits.max_top_logprobs) {
    return bad("top_logprobs must be in [0, ", limits.max_top_logprobs, "], got ", s.top_logprobs);
  }
  return absl::OkStatus();
}

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return "";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kError:
      return "error";
  }
  return "";
}

}  // namespace pdserve
