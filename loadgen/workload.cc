#include "loadgen/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "loadgen/words.h"
#include "nlohmann/json.hpp"

namespace pdserve::loadgen {
namespace {

// vLLM's ShareGPT filters.
constexpr int kMinSequenceTokens = 4;
constexpr int kMaxPromptTokens = 1024;
constexpr int kMaxTotalTokens = 2048;

std::string RequestId(uint64_t seed, int index) { return absl::StrCat("lg-", seed, "-", index); }

// `n` random token ids, none of them in `avoid`.
std::vector<int32_t> RandomIds(int n, const WorkloadOptions& o, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> pick(0, o.vocab_size - 1);
  std::vector<int32_t> ids;
  ids.reserve(n);
  while (static_cast<int>(ids.size()) < n) {
    const int32_t id = pick(rng);
    if (std::find(o.avoid_token_ids.begin(), o.avoid_token_ids.end(), id) ==
        o.avoid_token_ids.end()) {
      ids.push_back(id);
    }
  }
  return ids;
}

RequestInput Base(const WorkloadOptions& o, int index) {
  RequestInput in;
  in.id = RequestId(o.seed, index);
  in.ignore_eos = o.ignore_eos;
  in.temperature = o.temperature;
  return in;
}

std::vector<RequestInput> RandomWorkload(const WorkloadOptions& o, std::mt19937_64& rng) {
  std::vector<RequestInput> out;
  for (int i = 0; i < o.num_prompts; ++i) {
    RequestInput in = Base(o, i);
    in.input_tokens = SampleLength(o.random_input_len, o.random_range_ratio, rng);
    in.max_tokens = SampleLength(o.random_output_len, o.random_range_ratio, rng);
    if (o.token_ids) {
      in.token_ids = RandomIds(in.input_tokens, o, rng);
    } else {
      in.text = RandomWords(in.input_tokens, rng);
    }
    out.push_back(std::move(in));
  }
  return out;
}

// Each of K prefixes serves an equal share of the prompts (vLLM's prefix
// repetition), in a shuffled order so that consecutive requests differ.
std::vector<RequestInput> PrefixWorkload(const WorkloadOptions& o, std::mt19937_64& rng) {
  std::vector<std::vector<int32_t>> prefix_ids;
  std::vector<std::string> prefix_text;
  for (int k = 0; k < o.num_prefixes; ++k) {
    if (o.token_ids) {
      prefix_ids.push_back(RandomIds(o.prefix_len, o, rng));
    } else {
      prefix_text.push_back(RandomWords(o.prefix_len, rng));
    }
  }
  std::vector<int> which(o.num_prompts);
  for (int i = 0; i < o.num_prompts; ++i) which[i] = i % o.num_prefixes;
  std::shuffle(which.begin(), which.end(), rng);
  std::vector<RequestInput> out;
  for (int i = 0; i < o.num_prompts; ++i) {
    RequestInput in = Base(o, i);
    const int suffix = SampleLength(o.random_input_len, o.random_range_ratio, rng);
    in.input_tokens = o.prefix_len + suffix;
    in.max_tokens = SampleLength(o.random_output_len, o.random_range_ratio, rng);
    if (o.token_ids) {
      in.token_ids = prefix_ids[which[i]];
      std::vector<int32_t> tail = RandomIds(suffix, o, rng);
      in.token_ids.insert(in.token_ids.end(), tail.begin(), tail.end());
    } else {
      in.text = prefix_text[which[i]];
      if (!in.text.empty()) in.text.push_back(' ');
      in.text += RandomWords(suffix, rng);
    }
    out.push_back(std::move(in));
  }
  return out;
}

absl::StatusOr<std::vector<RequestInput>> ShareGptWorkload(const WorkloadOptions& o,
                                                           const TokenCounter& count_tokens,
                                                           std::mt19937_64& rng) {
  std::ifstream file(o.dataset_path, std::ios::binary);
  if (!file)
    return absl::NotFoundError(absl::StrCat("cannot open --dataset-path ", o.dataset_path));
  nlohmann::json data = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (!data.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        o.dataset_path,
        ": not a ShareGPT file (expected a JSON array of {\"conversations\": [...]})"));
  }
  // Conversations with a prompt and a reply.
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const nlohmann::json& entry : data) {
    if (!entry.is_object()) continue;
    auto conv = entry.find("conversations");
    if (conv == entry.end() || !conv->is_array() || conv->size() < 2) continue;
    const nlohmann::json& a = (*conv)[0];
    const nlohmann::json& b = (*conv)[1];
    if (!a.is_object() || !b.is_object() || !a.contains("value") || !b.contains("value") ||
        !a["value"].is_string() || !b["value"].is_string()) {
      continue;
    }
    pairs.emplace_back(a["value"].get<std::string>(), b["value"].get<std::string>());
  }
  data = nullptr;
  std::shuffle(pairs.begin(), pairs.end(), rng);
  auto count = [&](const std::string& text) -> int32_t {
    if (count_tokens) return count_tokens(text);
    return static_cast<int32_t>((text.size() + 3) / 4);
  };
  std::vector<RequestInput> out;
  for (auto& [prompt, reply] : pairs) {
    if (static_cast<int>(out.size()) >= o.num_prompts) break;
    const int32_t prompt_len = count(prompt);
    const int32_t output_len = o.sharegpt_output_len > 0 ? o.sharegpt_output_len : count(reply);
    if (prompt_len < kMinSequenceTokens ||
        (o.sharegpt_output_len == 0 && output_len < kMinSequenceTokens)) {
      continue;
    }
    if (prompt_len > kMaxPromptTokens || prompt_len + output_len > kMaxTotalTokens) continue;
    RequestInput in = Base(o, static_cast<int>(out.size()));
    in.text = std::move(prompt);
    in.input_tokens = prompt_len;
    in.max_tokens = output_len;
    out.push_back(std::move(in));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.dataset_path, ": no conversation passed the length filters"));
  }
  return out;
}

}  // namespace

int SampleLength(int length, double range_ratio, std::mt19937_64& rng) {
  const int lo = std::max(1, static_cast<int>(std::floor(length * (1.0 - range_ratio))));
  const int hi = std::max(lo, static_cast<int>(std::ceil(length * (1.0 + range_ratio))));
  if (lo == hi) return lo;
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

absl::Status ValidateWorkloadOptions(const WorkloadOptions& o) {
  if (o.num_prompts < 1) return absl::InvalidArgumentError("--num-prompts must be >= 1");
  if (o.random_input_len < 1) {
    return absl::InvalidArgumentError("--random-input-len must be >= 1");
  }
  if (o.random_output_len < 1)
    return absl::InvalidArgumentError("--random-output-len must be >= 1");
  if (!(o.random_range_ratio >= 0.0 && o.random_range_ratio < 1.0)) {
    return absl::InvalidArgumentError("--random-range-ratio must be in [0, 1)");
  }
  if (o.name == "prefix") {
    if (o.prefix_len < 1) return absl::InvalidArgumentError("--prefix-len must be >= 1 for prefix");
    if (o.num_prefixes < 1) return absl::InvalidArgumentError("--num-prefixes must be >= 1");
  } else if (o.name == "sharegpt") {
    if (o.dataset_path.empty()) {
      return absl::InvalidArgumentError("--dataset-name sharegpt needs --dataset-path");
    }
    if (o.sharegpt_output_len < 0) {
      return absl::InvalidArgumentError("--sharegpt-output-len must be >= 0");
    }
  } else if (o.name != "random") {
    return absl::InvalidArgumentError(
        absl::StrCat("--dataset-name: unknown '", o.name, "' (use random, sharegpt or prefix)"));
  }
  if (o.token_ids && o.name != "sharegpt" && o.vocab_size < 2) {
    return absl::InvalidArgumentError(
        "the target reported no vocabulary size for token-id prompts");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RequestInput>> BuildWorkload(const WorkloadOptions& options,
                                                        const TokenCounter& count_tokens) {
  if (absl::Status st = ValidateWorkloadOptions(options); !st.ok()) return st;
  std::mt19937_64 rng(options.seed);
  if (options.name == "sharegpt") return ShareGptWorkload(options, count_tokens, rng);
  if (options.name == "prefix") return PrefixWorkload(options, rng);
  return RandomWorkload(options, rng);
}

}  // namespace pdserve::loadgen
