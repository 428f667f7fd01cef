// Helpers for engine tests: models (dummy or real) and running requests to
// completion on an engine driven from the test thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/dummy_model.h"
#include "engine/engine.h"
#include "engine/gguf/gguf.h"
#include "engine/model.h"
#include "gtest/gtest.h"

namespace pdserve::testing {

inline std::shared_ptr<const Model> LoadDummy(const DummyModelSpec& spec, int32_t n_ctx = 0) {
  auto bytes = BuildDummyModelGguf(spec);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  auto file = gguf::GgufFile::FromBytes(*bytes);
  EXPECT_TRUE(file.ok()) << file.status();
  auto model = Model::FromGguf(std::move(*file), n_ctx);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::shared_ptr<const Model>(std::move(*model));
}

// The real model, or nullptr (the caller skips) when it is not fetched.
inline std::shared_ptr<const Model> LoadRealModel() {
  static std::shared_ptr<const Model> cached;
  if (cached) return cached;
  if (FILE* f = std::fopen(PDSERVE_MODEL_PATH, "rb")) {
    std::fclose(f);
  } else {
    return nullptr;
  }
  auto model = Model::Load(PDSERVE_MODEL_PATH, 2048);
  EXPECT_TRUE(model.ok()) << model.status();
  cached = std::move(*model);
  return cached;
}

#define PDS_REQUIRE_REAL_MODEL(var)                        \
  auto var = ::pdserve::testing::LoadRealModel();          \
  if (!var)                                                \
  GTEST_SKIP() << "model not found at " PDSERVE_MODEL_PATH \
                  "; run "                                 \
                  "scripts/fetch_model.sh"

struct Result {
  std::vector<TokenId> tokens;
  std::string text;
  FinishReason finish = FinishReason::kNone;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;
  std::vector<float> logprobs;
  int updates = 0;
};

inline OutputCallback Collect(Result* r) {
  return [r](const SeqOutput& out) {
    r->tokens.insert(r->tokens.end(), out.tokens.begin(), out.tokens.end());
    r->text += out.text;
    r->logprobs.insert(r->logprobs.end(), out.logprobs.begin(), out.logprobs.end());
    r->prompt_tokens = out.prompt_tokens;
    r->completion_tokens = out.completion_tokens;
    r->cached_tokens = out.cached_tokens;
    r->updates++;
    if (out.finish != FinishReason::kNone) r->finish = out.finish;
  };
}

inline RequestSpec Greedy(std::string id, std::vector<TokenId> prompt, int max_tokens,
                          bool ignore_eos = true) {
  RequestSpec s;
  s.id = std::move(id);
  s.prompt = std::move(prompt);
  s.sampling.temperature = 0;
  s.stop.max_tokens = max_tokens;
  s.stop.ignore_eos = ignore_eos;
  return s;
}

// Steps the engine until every result has finished (or `max_steps`).
inline void RunUntilDone(Engine* engine, const std::vector<Result*>& results,
                         int max_steps = 100000) {
  for (int i = 0; i < max_steps; ++i) {
    bool all = true;
    for (const Result* r : results) all = all && r->finish != FinishReason::kNone;
    if (all) return;
    engine->Step();
  }
  FAIL() << "requests did not finish";
}

inline std::unique_ptr<Engine> MakeEngine(std::shared_ptr<const Model> model,
                                          EngineOptions o = {}) {
  if (o.n_threads == 0) o.n_threads = 2;
  auto e = Engine::Create(std::move(model), o);
  EXPECT_TRUE(e.ok()) << e.status();
  return std::move(*e);
}

// Normalized mean squared error of `got` against `want`.
inline double Nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return den == 0 ? num : num / den;
}

}  // namespace pdserve::testing
