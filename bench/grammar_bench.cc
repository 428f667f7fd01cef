// Structured outputs: what the grammar mask costs per token at batch 1,
// against a decode step of the same model (issue 16's target: <= 5%).
//
// Generates greedily from one prompt, free and then under a JSON schema,
// and prints:
//   decode step free    mean engine step while decoding, no grammar
//   decode step json    the same under the schema (mask included)
//   mask per token      FillMask + ApplyTokenMask + Accept, timed alone by
//                       replaying the schema run's tokens (mean and p99)
//   share               mask per token / decode step free
//   vocabulary index    building the compiler for the vocabulary (once)
//   schema compile      the schema against the vocabulary, first and cached
//
//   build/bin/grammar_bench [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
//                           [--threads 2] [--tokens 64] [--reps 3]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/clock.h"
#include "engine/engine.h"
#include "engine/grammar/grammar.h"
#include "engine/grammar/tokenizer_vocab.h"
#include "engine/sampler.h"

namespace pdserve {
namespace {

constexpr const char* kSchema = R"({"type": "object", "properties": {
  "name": {"type": "string", "maxLength": 40},
  "age": {"type": "integer", "minimum": 0, "maximum": 150},
  "email": {"type": "string", "maxLength": 60},
  "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 8},
  "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["city", "zip"],
     "additionalProperties": false}},
  "required": ["name", "age", "email", "tags", "address"], "additionalProperties": false})";

struct RunResult {
  std::vector<TokenId> tokens;
  double step_ms = 0;  // mean over the decode steps
};

RunResult Generate(Engine* engine, const std::vector<TokenId>& prompt, int max_tokens, bool json,
                   const std::string& id) {
  RequestSpec spec;
  spec.id = id;
  spec.prompt = prompt;
  spec.sampling.temperature = 0;
  spec.stop.max_tokens = max_tokens;
  spec.stop.ignore_eos = !json;  // free text runs the full length
  if (json) spec.sampling.response_format = {grammar::GrammarKind::kJsonSchema, kSchema};
  RunResult r;
  bool done = false;
  absl::Status st = engine->Submit(spec, [&](const SeqOutput& out) {
    r.tokens.insert(r.tokens.end(), out.tokens.begin(), out.tokens.end());
    if (out.finish != FinishReason::kNone) done = true;
  });
  if (!st.ok()) {
    std::fprintf(stderr, "submit: %s\n", std::string(st.message()).c_str());
    std::exit(1);
  }
  while (r.tokens.empty() && !done) engine->Step();  // prefill and token #1
  const size_t before = r.tokens.size();
  const int64_t t0 = MonoNowNs();
  int steps = 0;
  while (!done) {
    engine->Step();
    ++steps;
  }
  const int64_t t1 = MonoNowNs();
  if (r.tokens.size() > before) r.step_ms = (t1 - t0) / 1e6 / (r.tokens.size() - before);
  return r;
}

EncodeOptions ParseSpecial() {
  EncodeOptions o;
  o.parse_special = true;  // the chat markers written in the prompt
  return o;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  using namespace pdserve;
  std::string model_path =
      std::string(PDSERVE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int threads = 2, n_tokens = 64, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model"))
      model_path = argv[i + 1];
    else if (!std::strcmp(argv[i], "--threads"))
      threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens"))
      n_tokens = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps"))
      reps = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  auto model = Model::Load(model_path);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  std::shared_ptr<const Model> m = std::move(*model);
  EngineOptions o;
  o.n_threads = threads;
  o.prefix_cache = false;
  auto engine = Engine::Create(m, o);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
    return 1;
  }
  auto prompt = m->tokenizer().Encode(
      "<|im_start|>user\nDescribe a customer as JSON.<|im_end|>\n<|im_start|>assistant\n",
      ParseSpecial());
  if (!prompt.ok()) return 1;

  std::vector<double> free_ms, json_ms;
  RunResult json_run;
  for (int r = 0; r < reps + 1; ++r) {  // the first of each warms up (and compiles the schema)
    RunResult f = Generate(engine->get(), *prompt, n_tokens, false, "free" + std::to_string(r));
    RunResult j = Generate(engine->get(), *prompt, 4 * n_tokens, true, "json" + std::to_string(r));
    if (r == 0) continue;
    free_ms.push_back(f.step_ms);
    json_ms.push_back(j.step_ms);
    json_run = j;
  }

  // The mask alone, replaying the schema run's tokens (as the engine does:
  // fill, apply to a logits row, accept).
  const int32_t n_vocab = m->config().n_vocab;
  const int64_t v0 = MonoNowNs();
  auto compiler = grammar::CompilerForTokenizer(m->tokenizer(), n_vocab);
  if (!compiler.ok()) return 1;
  const int64_t v1 = MonoNowNs();
  if (!(*compiler)->NewMatcher({grammar::GrammarKind::kJsonSchema, kSchema}).ok()) return 1;
  const int64_t v2 = MonoNowNs();
  if (!(*compiler)->NewMatcher({grammar::GrammarKind::kJsonSchema, kSchema}).ok()) return 1;
  const int64_t v3 = MonoNowNs();
  std::vector<float> logits(n_vocab);
  std::mt19937 rng(1);
  std::vector<uint32_t> mask(grammar::BitmaskWords(n_vocab));
  std::vector<double> per_token_us;
  for (int r = 0; r < reps; ++r) {
    auto matcher = (*compiler)->NewMatcher({grammar::GrammarKind::kJsonSchema, kSchema});
    if (!matcher.ok()) return 1;
    for (TokenId t : json_run.tokens) {
      for (float& x : logits) x = static_cast<float>(rng() % 1000) / 100.0f;
      const int64_t t0 = MonoNowNs();
      if (!(*matcher)->FillMask(mask.data()).ok()) break;
      ApplyTokenMask(logits.data(), n_vocab, mask.data());
      const bool ok = (*matcher)->Accept(t).ok();
      per_token_us.push_back((MonoNowNs() - t0) / 1e3);
      if (!ok) break;
    }
  }
  double mean_us = 0;
  for (double x : per_token_us) mean_us += x;
  mean_us /= std::max<size_t>(1, per_token_us.size());
  std::sort(per_token_us.begin(), per_token_us.end());
  const double p99_us = per_token_us.empty() ? 0 : per_token_us[per_token_us.size() * 99 / 100];
  const double step_free = Median(free_ms), step_json = Median(json_ms);
  std::printf("model %s, %d threads, batch 1, %d reps (medians)\n", model_path.c_str(), threads,
              reps);
  std::printf("decode step free    %.3f ms\n", step_free);
  std::printf("decode step json    %.3f ms  (%zu tokens under the schema)\n", step_json,
              json_run.tokens.size());
  std::printf("mask per token      %.1f us mean, %.1f us p99 (%zu tokens)\n", mean_us, p99_us,
              per_token_us.size());
  std::printf("share               %.2f%% of a decode step\n", 100.0 * mean_us / 1e3 / step_free);
  std::printf("vocabulary index    %.1f ms (once per node)\n", (v1 - v0) / 1e6);
  std::printf("schema compile      %.1f ms first, %.3f ms cached\n", (v2 - v1) / 1e6,
              (v3 - v2) / 1e6);
  std::printf("json output: %s\n", m->tokenizer().Decode(json_run.tokens).c_str());
  return 0;
}
