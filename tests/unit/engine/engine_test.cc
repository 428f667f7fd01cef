// Engine behaviour on a random-weight model: validation, stop conditions,
// sampling reproducibility, cancellation, preemption, and the prefill-only /
// imported-decode path the cluster uses.
#include <cstring>
#include <fstream>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/step_log.h"
#include "nlohmann/json.hpp"
#include "tests/unit/engine/test_util.h"

namespace pdserve::testing {
namespace {

std::vector<TokenId> Tokens(int n, int seed) {
  std::vector<TokenId> t(n);
  for (int i = 0; i < n; ++i) t[i] = 32 + (i * 31 + seed * 17) % 200;
  return t;
}

TEST(Engine, RejectsBadRequestsWithClearErrors) {
  auto model = LoadDummy(DummyModelSpec{});  // n_ctx 256
  auto engine = MakeEngine(model);
  auto submit = [&](RequestSpec s) { return engine->Submit(std::move(s), nullptr); };
  struct Case {
    const char* what;
    std::function<void(RequestSpec&)> edit;
    const char* message;
  } cases[] = {
      {"empty", [](RequestSpec& s) { s.prompt.clear(); }, "prompt is empty"},
      {"too long", [](RequestSpec& s) { s.prompt.assign(256, 40); }, "context holds 256"},
      {"max_tokens 0", [](RequestSpec& s) { s.stop.max_tokens = 0; },
       "max_tokens must be at least 1"},
      {"past context", [](RequestSpec& s) { s.stop.max_tokens = 250; },
       "exceeds the context length"},
      {"nan temperature", [](RequestSpec& s) { s.sampling.temperature = NAN; }, "temperature"},
      {"negative temperature", [](RequestSpec& s) { s.sampling.temperature = -1; }, "temperature"},
      {"top_p 0", [](RequestSpec& s) { s.sampling.top_p = 0; }, "top_p must be in (0, 1]"},
      {"top_p 1.5", [](RequestSpec& s) { s.sampling.top_p = 1.5; }, "top_p"},
      {"top_k -1", [](RequestSpec& s) { s.sampling.top_k = -1; }, "top_k must be >= 0"},
      {"bad token", [](RequestSpec& s) { s.prompt[0] = 100000; }, "outside the vocabulary"},
      {"bad stop id", [](RequestSpec& s) { s.stop.stop_token_ids = {-3}; }, "stop token id"},
      {"empty stop", [](RequestSpec& s) { s.stop.stop_strings = {""}; },
       "stop strings must not be empty"},
  };
  for (const Case& c : cases) {
    RequestSpec s = Greedy("r", Tokens(10, 1), 8);
    c.edit(s);
    absl::Status st = submit(std::move(s));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(std::string(st.message()).find(c.message), std::string::npos)
        << c.what << ": " << st.message();
  }
  ASSERT_TRUE(submit(Greedy("dup", Tokens(10, 1), 4)).ok());
  EXPECT_EQ(submit(Greedy("dup", Tokens(10, 1), 4)).code(), absl::StatusCode::kAlreadyExists);
}

TEST(Engine, RequestLargerThanTheCacheIsResourceExhausted) {
  auto model = LoadDummy(DummyModelSpec{});
  EngineOptions o;
  o.kv_blocks = 4;
  o.block_size = 4;  // 16 tokens in all
  auto engine = MakeEngine(model, o);
  absl::Status st = engine->Submit(Greedy("big", Tokens(10, 1), 10), nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
}

TEST(Engine, MaxTokensAndUsage) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  Result r;
  ASSERT_TRUE(engine->Submit(Greedy("a", Tokens(12, 2), 7), Collect(&r)).ok());
  RunUntilDone(engine.get(), {&r});
  EXPECT_EQ(r.finish, FinishReason::kLength);
  EXPECT_EQ(r.tokens.size(), 7u);
  EXPECT_EQ(r.completion_tokens, 7);
  EXPECT_EQ(r.prompt_tokens, 12);
  EXPECT_EQ(r.updates, 7);
  // Every block is back once the request is done.
  EXPECT_EQ(engine->cache().Stats().free_blocks, engine->cache().config().n_blocks);
}

TEST(Engine, StopTokenIdEndsWithoutText) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  auto run = [&](const std::string& id, int max_tokens, std::vector<TokenId> stop_ids) {
    RequestSpec s = Greedy(id, Tokens(12, 2), max_tokens);
    s.stop.stop_token_ids = std::move(stop_ids);
    Result r;
    EXPECT_TRUE(engine->Submit(std::move(s), Collect(&r)).ok());
    RunUntilDone(engine.get(), {&r});
    return r;
  };
  const Result first = run("a", 6, {});
  // Stop on the third greedy token (or its first occurrence).
  const TokenId stop = first.tokens[2];
  const size_t idx =
      std::find(first.tokens.begin(), first.tokens.end(), stop) - first.tokens.begin();
  const Result r = run("b", 6, {stop});
  EXPECT_EQ(r.finish, FinishReason::kStop);
  EXPECT_EQ(r.tokens, std::vector<TokenId>(first.tokens.begin(), first.tokens.begin() + idx + 1));
  // The text is that of the tokens before the stop token.
  if (idx > 0)
    EXPECT_EQ(r.text, run("c", static_cast<int>(idx), {}).text);
  else
    EXPECT_EQ(r.text, "");
}

TEST(Engine, StopStringIsNotEmitted) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  Result first;
  ASSERT_TRUE(engine->Submit(Greedy("a", Tokens(12, 3), 12), Collect(&first)).ok());
  RunUntilDone(engine.get(), {&first});
  ASSERT_GE(first.text.size(), 6u);
  // A stop string made of text from the middle of the output.
  const std::string stop = first.text.substr(3, 3);
  RequestSpec s = Greedy("b", Tokens(12, 3), 12);
  s.stop.stop_strings = {stop};
  Result r;
  ASSERT_TRUE(engine->Submit(std::move(s), Collect(&r)).ok());
  RunUntilDone(engine.get(), {&r});
  EXPECT_EQ(r.finish, FinishReason::kStop);
  EXPECT_EQ(r.text, first.text.substr(0, first.text.find(stop)));
}

TEST(Engine, SeededSamplingIsReproducible) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  auto run = [&](const std::string& id, uint64_t seed) {
    RequestSpec s = Greedy(id, Tokens(10, 4), 16);
    s.sampling.temperature = 1.5f;
    s.sampling.seed = seed;
    Result r;
    EXPECT_TRUE(engine->Submit(std::move(s), Collect(&r)).ok());
    RunUntilDone(engine.get(), {&r});
    return r.tokens;
  };
  EXPECT_EQ(run("a", 42), run("b", 42));
  EXPECT_NE(run("c", 42), run("d", 43));
}

// A request whose node failed mid-stream continues elsewhere as prompt +
// the tokens the client has, with n_resumed: greedy and seeded sampling
// with every penalty give the same tokens and text as one uninterrupted run.
TEST(Engine, ResumedRequestContinuesTokenExact) {
  auto model = LoadDummy(DummyModelSpec{});
  auto engine = MakeEngine(model);
  const std::vector<TokenId> prompt = Tokens(10, 4);
  for (const bool sampled : {false, true}) {
    RequestSpec base = Greedy("", prompt, 24);
    if (sampled) {
      base.sampling.temperature = 1.5f;
      base.sampling.seed = 7;
      base.sampling.repetition_penalty = 1.3f;
      base.sampling.presence_penalty = 0.5f;
      base.sampling.frequency_penalty = 0.7f;
    }
    // Uninterrupted, one output per token (text as the client got it).
    std::vector<SeqOutput> outs;
    RequestSpec whole = base;
    whole.id = sampled ? "whole-s" : "whole-g";
    ASSERT_TRUE(engine->Submit(whole, [&](const SeqOutput& o) { outs.push_back(o); }).ok());
    Result want;
    while (outs.empty() || outs.back().finish == FinishReason::kNone) engine->Step();
    for (const SeqOutput& o : outs) Collect (&want)(o);
    ASSERT_EQ(want.tokens.size(), 24u);
    for (const int k : {1, 5, 23}) {
      std::vector<TokenId> had;
      std::string had_text;
      for (const SeqOutput& o : outs) {
        if (static_cast<int>(had.size()) >= k) break;
        had.insert(had.end(), o.tokens.begin(), o.tokens.end());
        had_text += o.text;
      }
      ASSERT_EQ(static_cast<int>(had.size()), k);
      RequestSpec rest = base;
      rest.id = absl::StrCat(sampled ? "rest-s" : "rest-g", k);
      rest.prompt.insert(rest.prompt.end(), had.begin(), had.end());
      rest.n_resumed = k;
      rest.stop.max_tokens = 24 - k;
      Result got;
      ASSERT_TRUE(engine->Submit(std::move(rest), Collect(&got)).ok());
      RunUntilDone(engine.get(), {&got});
      had.insert(had.end(), got.tokens.begin(), got.tokens.end());
      EXPECT_EQ(had, want.tokens) << "sampled " << sampled << ", k " << k;
      EXPECT_EQ(had_text + got.text, want.text) << "sampled " << sampled << ", k " << k;
      EXPECT_EQ(got.completion_tokens, 24 - k);
      EXPECT_EQ(got.finish, FinishReason::kLength);
    }
  }
}

TEST(Engine, ResumedCountOutsidePromptIsInvalidArgument) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  for (const int n : {-1, 10, 11}) {
    RequestSpec s = Greedy(absl::StrCat("r", n), Tokens(10, 1), 4);
    s.n_resumed = n;
    absl::Status st = engine->Submit(std::move(s), nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_NE(std::string(st.message()).find("n_resumed"), std::string::npos) << st.message();
  }
}

TEST(Engine, AbortFreesBlocksAtOnce) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  const int total = engine->cache().config().n_blocks;
  Result r;
  ASSERT_TRUE(engine->Submit(Greedy("a", Tokens(40, 5), 100), Collect(&r)).ok());
  for (int i = 0; i < 3; ++i) engine->Step();
  EXPECT_LT(engine->cache().Stats().free_blocks, total);
  engine->Abort("a");
  engine->Step();
  EXPECT_EQ(r.finish, FinishReason::kAbort);
  EXPECT_EQ(engine->cache().Stats().free_blocks, total);
  EXPECT_EQ(engine->Stats().n_running, 0);
}

// Whoever waits on a request's callback hears its end even when the engine
// stops first: queued, running, awaiting KV, or aborted with the Abort
// still in the inbox. A node that shuts down leaks nothing held for them.
TEST(Engine, StopEndsEveryRequestThroughItsCallback) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  const int total = engine->cache().config().n_blocks;
  Result running, queued, aborted, awaiting;
  absl::Status running_error, awaiting_error;
  auto with_error = [](Result* r, absl::Status* error) {
    OutputCallback collect = Collect(r);
    return [collect, error](const SeqOutput& out) {
      collect(out);
      if (!out.error.ok()) *error = out.error;
    };
  };
  ASSERT_TRUE(
      engine->Submit(Greedy("run", Tokens(30, 1), 50), with_error(&running, &running_error)).ok());
  for (int i = 0; i < 3; ++i) engine->Step();
  ASSERT_EQ(running.finish, FinishReason::kNone);
  ASSERT_TRUE(engine->Submit(Greedy("queued", Tokens(12, 2), 8), Collect(&queued)).ok());
  ASSERT_TRUE(engine->Submit(Greedy("aborted", Tokens(12, 3), 8), Collect(&aborted)).ok());
  engine->Abort("aborted");
  ASSERT_TRUE(
      engine->Reserve(Greedy("awaiting", Tokens(20, 4), 8), with_error(&awaiting, &awaiting_error))
          .ok());

  engine->Stop();
  EXPECT_EQ(running.finish, FinishReason::kError);
  EXPECT_EQ(running_error.code(), absl::StatusCode::kUnavailable) << running_error;
  EXPECT_EQ(queued.finish, FinishReason::kError);
  EXPECT_EQ(aborted.finish, FinishReason::kAbort);
  EXPECT_EQ(awaiting.finish, FinishReason::kError);
  EXPECT_EQ(awaiting_error.code(), absl::StatusCode::kUnavailable) << awaiting_error;
  EXPECT_EQ(engine->cache().Stats().free_blocks, total);
  EXPECT_EQ(engine->Stats().committed_kv_blocks, 0);
  // A stopped engine takes nothing new (it would never run it).
  EXPECT_EQ(engine->Submit(Greedy("late", Tokens(12, 5), 4), nullptr).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine->Reserve(Greedy("late2", Tokens(12, 5), 4), nullptr).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(Engine, PreemptsWhenTheCacheRunsOutAndStillFinishesEverything) {
  auto model = LoadDummy(DummyModelSpec{});
  EngineOptions small;
  small.block_size = 4;
  small.kv_blocks = 20;  // 80 tokens for three requests that need 3 x 40
  auto engine = MakeEngine(model, small);
  std::vector<Result> rs(3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        engine->Submit(Greedy("r" + std::to_string(i), Tokens(12, i), 28), Collect(&rs[i])).ok());
  }
  RunUntilDone(engine.get(), {&rs[0], &rs[1], &rs[2]});
  EXPECT_GT(engine->Stats().preemptions, 0);
  for (const Result& r : rs) {
    EXPECT_EQ(r.finish, FinishReason::kLength);
    EXPECT_EQ(r.tokens.size(), 28u);
    EXPECT_EQ(r.completion_tokens, 28);
  }
  EXPECT_EQ(engine->cache().Stats().free_blocks, 20);
}

TEST(Engine, PrefixCacheReusesFullBlocks) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  const std::vector<TokenId> prompt = Tokens(37, 6);  // two full 16-blocks + 5
  Result a, b;
  ASSERT_TRUE(engine->Submit(Greedy("a", prompt, 4), Collect(&a)).ok());
  RunUntilDone(engine.get(), {&a});
  EXPECT_EQ(a.cached_tokens, 0);
  ASSERT_TRUE(engine->Submit(Greedy("b", prompt, 4), Collect(&b)).ok());
  RunUntilDone(engine.get(), {&b});
  EXPECT_EQ(b.cached_tokens, 32);
  const KvCacheStats st = engine->cache().Stats();
  EXPECT_EQ(st.prefix_hit_tokens, 32);
  EXPECT_GT(st.prefix_query_tokens, 0);
}

// Copies each layer's blocks from a prefill engine's cache into a decode
// engine's reserved blocks as soon as the layer is stored.
class CopySink : public KvSink {
 public:
  CopySink(KvCache* from, KvCache* to, std::vector<BlockId> dest)
      : from_(from), to_(to), dest_(std::move(dest)) {}
  void OnLayerStored(int32_t layer, const std::vector<BlockId>& blocks) override {
    layers_seen++;
    for (size_t i = 0; i < dest_.size(); ++i) {
      std::memcpy(to_->BlockData(layer, dest_[i]), from_->BlockData(layer, blocks[i]),
                  from_->config().LayerBlockBytes());
    }
  }
  int layers_seen = 0;

 private:
  KvCache* from_;
  KvCache* to_;
  std::vector<BlockId> dest_;
};

// Seeded sampling too: the decode node's generator skips the draw the
// prefill node took for token #1.
TEST(Engine, PrefillOnlyThenImportedDecodeMatchesFullGeneration) {
  for (const bool sampled : {false, true}) {
    SCOPED_TRACE(sampled ? "seeded sampling" : "greedy");
    auto model = LoadDummy(DummyModelSpec{});
    auto full = MakeEngine(model);
    auto prefill = MakeEngine(model);
    auto decode = MakeEngine(model);
    const std::vector<TokenId> prompt = Tokens(29, 7);
    auto spec_of = [&](const std::string& id) {
      RequestSpec s = Greedy(id, prompt, 10);
      if (sampled) {
        s.sampling.temperature = 1.5f;
        s.sampling.seed = 11;
        s.sampling.frequency_penalty = 0.5f;
      }
      return s;
    };

    Result want;
    ASSERT_TRUE(full->Submit(spec_of("x"), Collect(&want)).ok());
    RunUntilDone(full.get(), {&want});

    Result dec;
    auto reserved = decode->Reserve(spec_of("x"), Collect(&dec));
    ASSERT_TRUE(reserved.ok()) << reserved.status();
    CopySink sink(&prefill->cache(), &decode->cache(), *reserved);
    Result pre;
    bool prefill_done = false;
    ASSERT_TRUE(prefill
                    ->Submit(
                        spec_of("x"),
                        [&](const SeqOutput& out) {
                          Collect (&pre)(out);
                          prefill_done = prefill_done || out.prefill_done;
                        },
                        SeqMode::kPrefillOnly, &sink)
                    .ok());
    while (!prefill_done) ASSERT_TRUE(prefill->Step());
    EXPECT_EQ(sink.layers_seen, model->config().n_layers);
    ASSERT_EQ(pre.tokens.size(), 1u);
    // The prefill engine holds its blocks until released.
    EXPECT_LT(prefill->cache().Stats().free_blocks, prefill->cache().config().n_blocks);
    prefill->Release("x");
    prefill->Step();
    EXPECT_EQ(prefill->cache().Stats().free_blocks, prefill->cache().config().n_blocks);

    decode->Activate("x", pre.tokens[0]);
    RunUntilDone(decode.get(), {&dec});
    std::vector<TokenId> got = pre.tokens;
    got.insert(got.end(), dec.tokens.begin(), dec.tokens.end());
    EXPECT_EQ(got, want.tokens);
    EXPECT_EQ(pre.text + dec.text, want.text);
    EXPECT_EQ(dec.completion_tokens, 10);
    EXPECT_EQ(dec.finish, FinishReason::kLength);
    EXPECT_EQ(decode->cache().Stats().free_blocks, decode->cache().config().n_blocks);
  }
}

TEST(Engine, ReserveSaysNoRoomAsAValue) {
  auto model = LoadDummy(DummyModelSpec{});
  EngineOptions o;
  o.block_size = 4;
  o.kv_blocks = 10;
  auto engine = MakeEngine(model, o);
  ASSERT_TRUE(engine->Reserve(Greedy("a", Tokens(24, 1), 4), nullptr).ok());  // 6 blocks
  auto second = engine->Reserve(Greedy("b", Tokens(24, 2), 4), nullptr);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  engine->Abort("a");
  engine->Step();
  EXPECT_TRUE(engine->Reserve(Greedy("b", Tokens(24, 2), 4), nullptr).ok());
}

TEST(Engine, BackgroundLoopServesConcurrentSubmitters) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  engine->Start();
  std::mutex mu;
  std::map<std::string, Result> results;
  std::atomic<int> done{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] {
      const std::string id = "c" + std::to_string(i);
      ASSERT_TRUE(engine
                      ->Submit(Greedy(id, Tokens(10 + i, i), 6),
                               [&, id](const SeqOutput& out) {
                                 std::lock_guard<std::mutex> lock(mu);
                                 Collect (&results[id])(out);
                                 if (out.finish != FinishReason::kNone) done++;
                               })
                      .ok());
    });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < 2000 && done < 8; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  engine->Stop();
  ASSERT_EQ(done.load(), 8);
  for (auto& [id, r] : results) EXPECT_EQ(r.tokens.size(), 6u) << id;
}

// Each step as the step observer sees it: prompt chunks as prefill (with
// their attention pairs), sequences past their prompt as decode.
TEST(Engine, StepObserverSeesEachStepsShape) {
  struct Recorder : StepObserver {
    std::vector<StepRecord> steps;
    void OnStep(const StepRecord& s) override { steps.push_back(s); }
  } rec;
  EngineOptions o;
  o.max_batch_tokens = 8;
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}), o);
  engine->SetStepObserver(&rec);
  Result a, b;
  ASSERT_TRUE(engine->Submit(Greedy("a", Tokens(5, 1), 3), Collect(&a)).ok());
  ASSERT_TRUE(engine->Submit(Greedy("b", Tokens(10, 2), 2), Collect(&b)).ok());
  RunUntilDone(engine.get(), {&a, &b});
  // Step 1: a's 5 tokens, b's first 3. Step 2: a decodes at 6, b's last 7.
  // Step 3: a at 7, b at 11. Then a is done (3 tokens), b too (2).
  ASSERT_EQ(rec.steps.size(), 3u);
  const auto pairs = [](double past, double n) { return n * past + n * (n + 1) / 2; };
  EXPECT_EQ(rec.steps[0].prefill_tokens, 8);
  EXPECT_EQ(rec.steps[0].attention_pairs, pairs(0, 5) + pairs(0, 3));
  EXPECT_EQ(rec.steps[0].decode_seqs, 0);
  EXPECT_EQ(rec.steps[0].idle_before_ns, 0);
  EXPECT_EQ(rec.steps[1].prefill_tokens, 7);
  EXPECT_EQ(rec.steps[1].attention_pairs, pairs(3, 7));
  EXPECT_EQ(rec.steps[1].decode_seqs, 1);
  EXPECT_EQ(rec.steps[1].decode_context, 6);
  EXPECT_EQ(rec.steps[2].prefill_tokens, 0);
  EXPECT_EQ(rec.steps[2].decode_seqs, 2);
  EXPECT_EQ(rec.steps[2].decode_context, 7 + 11);
  for (size_t i = 0; i < rec.steps.size(); ++i) {
    const StepRecord& s = rec.steps[i];
    EXPECT_GT(s.forward_ns, 0) << i;
    EXPECT_GE(s.total_ns, s.forward_ns) << i;
    EXPECT_GE(s.schedule_ns, 0) << i;
    if (i > 0) {
      EXPECT_GE(s.idle_before_ns, 0) << i;
      EXPECT_GE(s.start_ns, rec.steps[i - 1].start_ns + rec.steps[i - 1].total_ns) << i;
    }
  }
}

TEST(Engine, StepLogWritesAJsonLinePerStep) {
  const std::string path = ::testing::TempDir() + "/engine_test.steps.jsonl";
  {
    absl::StatusOr<std::unique_ptr<StepLog>> log = StepLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
    engine->SetStepObserver(log->get());
    Result r;
    ASSERT_TRUE(engine->Submit(Greedy("a", Tokens(4, 1), 3), Collect(&r)).ok());
    RunUntilDone(engine.get(), {&r});
  }
  std::ifstream in(path);
  std::string line;
  std::vector<nlohmann::json> lines;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["prefill_tokens"], 4);
  EXPECT_EQ(lines[0]["attention_pairs"], 10);
  EXPECT_EQ(lines[2]["decode_seqs"], 1);
  EXPECT_EQ(lines[2]["decode_context"], 6);
  EXPECT_GT(lines[2]["forward_ns"].get<int64_t>(), 0);
  EXPECT_GE(lines[2]["total_ns"].get<int64_t>(), lines[2]["forward_ns"].get<int64_t>());

  absl::StatusOr<std::unique_ptr<StepLog>> bad = StepLog::Open("/nonexistent-dir/x.jsonl");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("/nonexistent-dir/x.jsonl"), absl::string_view::npos);
}

// n > 1 samples: per-sample results, and the request's last word.
struct SampleResults {
  std::map<int32_t, Result> by_index;
  int done = 0;  // outputs with request_done (exactly one expected)
  int32_t total_completion_tokens = 0;
  absl::Status error;
  bool finished() const { return done > 0; }
};

OutputCallback CollectSamples(SampleResults* r) {
  return [r](const SeqOutput& out) {
    Collect (&r->by_index[out.sample_index])(out);
    if (out.finish == FinishReason::kError) {
      r->error = out.error;
      r->done++;
    }
    if (out.request_done) {
      r->done++;
      r->total_completion_tokens = out.completion_tokens;
    }
  };
}

void RunSamplesUntilDone(Engine* engine, SampleResults* r) {
  for (int i = 0; i < 100000 && !r->finished(); ++i) engine->Step();
  ASSERT_TRUE(r->finished()) << "request did not finish";
}

RequestSpec Samples(std::string id, std::vector<TokenId> prompt, int max_tokens, int n,
                    std::optional<uint64_t> seed) {
  RequestSpec s = Greedy(std::move(id), std::move(prompt), max_tokens);
  s.sampling.n = n;
  if (seed) {
    s.sampling.temperature = 1.5f;
    s.sampling.seed = seed;
    s.sampling.frequency_penalty = 0.5f;
  }
  return s;
}

TEST(EngineSamples, NOutsideItsRangeIsInvalidArgument) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  for (int n : {0, kMaxSamples + 1}) {
    absl::Status st = engine->Submit(Samples("r", Tokens(10, 1), 4, n, std::nullopt), nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_NE(std::string(st.message()).find("n (samples)"), std::string::npos) << st;
  }
}

// Greedy samples are identical (as vLLM's are), each equal to n = 1; usage
// sums them; every block (shared or copied) comes back exactly once.
TEST(EngineSamples, GreedySamplesAreIdenticalAndShareThePrompt) {
  auto model = LoadDummy(DummyModelSpec{});
  EngineOptions o;
  o.block_size = 4;
  auto engine = MakeEngine(model, o);
  Result one;
  ASSERT_TRUE(engine->Submit(Greedy("one", Tokens(10, 3), 6), Collect(&one)).ok());
  RunUntilDone(engine.get(), {&one});

  SampleResults r;
  ASSERT_TRUE(
      engine->Submit(Samples("three", Tokens(10, 3), 6, 3, std::nullopt), CollectSamples(&r)).ok());
  RunSamplesUntilDone(engine.get(), &r);
  ASSERT_TRUE(r.error.ok()) << r.error;
  EXPECT_EQ(r.done, 1);
  ASSERT_EQ(r.by_index.size(), 3u);
  for (auto& [i, res] : r.by_index) {
    EXPECT_EQ(res.tokens, one.tokens) << "sample " << i;
    EXPECT_EQ(res.text, one.text) << "sample " << i;
    EXPECT_EQ(res.finish, FinishReason::kLength) << "sample " << i;
  }
  EXPECT_EQ(r.total_completion_tokens, 18);
  EXPECT_EQ(engine->cache().Stats().free_blocks, engine->cache().config().n_blocks);
  for (BlockId b = 0; b < engine->cache().config().n_blocks; ++b) {
    EXPECT_EQ(engine->cache().RefCount(b), 0) << b;
  }
}

// Sample i of a seeded request draws what an n = 1 request seeded with
// SampleSeed(seed, i) draws: the forked KV (shared full blocks, copied
// partial block) is the prompt's own, and samples are reproducible.
TEST(EngineSamples, SeededSamplesMatchSingleRequestsWithDerivedSeeds) {
  auto model = LoadDummy(DummyModelSpec{});
  EngineOptions o;
  o.block_size = 4;
  auto engine = MakeEngine(model, o);
  const std::vector<TokenId> prompt = Tokens(10, 5);
  SampleResults r;
  ASSERT_TRUE(engine->Submit(Samples("n4", prompt, 12, 4, 42), CollectSamples(&r)).ok());
  RunSamplesUntilDone(engine.get(), &r);
  ASSERT_TRUE(r.error.ok()) << r.error;
  ASSERT_EQ(r.by_index.size(), 4u);
  for (int32_t i = 0; i < 4; ++i) {
    Result single;
    RequestSpec s = Samples(absl::StrCat("single", i), prompt, 12, 1, SampleSeed(42, i));
    ASSERT_TRUE(engine->Submit(std::move(s), Collect(&single)).ok());
    RunUntilDone(engine.get(), {&single});
    EXPECT_EQ(r.by_index[i].tokens, single.tokens) << "sample " << i;
  }
  EXPECT_NE(r.by_index[0].tokens, r.by_index[1].tokens);
  SampleResults again;
  ASSERT_TRUE(engine->Submit(Samples("again", prompt, 12, 4, 42), CollectSamples(&again)).ok());
  RunSamplesUntilDone(engine.get(), &again);
  for (int32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(again.by_index[i].tokens, r.by_index[i].tokens) << "sample " << i;
  }
  EXPECT_EQ(engine->cache().Stats().free_blocks, engine->cache().config().n_blocks);
}

// A fork that finds no block for its copy of the partial block fails the
// request with ResourceExhausted; everything it held is freed, others keep
// theirs.
TEST(EngineSamples, ForkWithoutRoomFailsTheRequestCleanly) {
  auto model = LoadDummy(DummyModelSpec{});
  EngineOptions o;
  o.block_size = 4;
  o.kv_blocks = 12;
  o.prefix_cache = false;
  auto engine = MakeEngine(model, o);
  auto held = engine->Reserve(Greedy("other", Tokens(36, 9), 4), nullptr);  // 9 blocks
  ASSERT_TRUE(held.ok()) << held.status();
  engine->Step();
  SampleResults r;
  // 10 tokens: 3 blocks, all that is left; forking 2 more samples needs 2.
  ASSERT_TRUE(engine->Submit(Samples("n3", Tokens(10, 2), 2, 3, 7), CollectSamples(&r)).ok());
  RunSamplesUntilDone(engine.get(), &r);
  EXPECT_EQ(r.error.code(), absl::StatusCode::kResourceExhausted) << r.error;
  EXPECT_EQ(r.by_index.size(), 1u);
  EXPECT_EQ(engine->cache().Stats().free_blocks, 3);
  engine->Abort("other");
  engine->Step();
  EXPECT_EQ(engine->cache().Stats().free_blocks, 12);
}

TEST(EngineSamples, AbortEndsEverySampleAndFreesTheirBlocks) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  SampleResults r;
  ASSERT_TRUE(engine->Submit(Samples("n3", Tokens(20, 2), 50, 3, 5), CollectSamples(&r)).ok());
  for (int i = 0; i < 4; ++i) engine->Step();
  ASSERT_EQ(r.by_index.size(), 3u);
  engine->Abort("n3");
  engine->Step();
  EXPECT_EQ(r.done, 1);
  for (auto& [i, res] : r.by_index) EXPECT_EQ(res.finish, FinishReason::kAbort) << i;
  EXPECT_EQ(engine->cache().Stats().free_blocks, engine->cache().config().n_blocks);
  // The id is free again.
  EXPECT_TRUE(engine->Submit(Greedy("n3", Tokens(5, 1), 2), nullptr).ok());
}

// Disaggregated: the prefill node samples token #1 of every sample from the
// one prefill; the decode node forks the imported KV. Same tokens as one
// engine doing it all.
TEST(EngineSamples, PrefillOnlyThenImportedDecodeMatchesFullGeneration) {
  auto model = LoadDummy(DummyModelSpec{});
  EngineOptions o;
  o.block_size = 4;
  auto full = MakeEngine(model, o);
  auto prefill = MakeEngine(model, o);
  auto decode = MakeEngine(model, o);
  const std::vector<TokenId> prompt = Tokens(29, 7);
  SampleResults want;
  ASSERT_TRUE(full->Submit(Samples("x", prompt, 10, 3, 11), CollectSamples(&want)).ok());
  RunSamplesUntilDone(full.get(), &want);
  ASSERT_TRUE(want.error.ok()) << want.error;

  SampleResults dec;
  auto reserved = decode->Reserve(Samples("x", prompt, 10, 3, 11), CollectSamples(&dec));
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  CopySink sink(&prefill->cache(), &decode->cache(), *reserved);
  std::optional<SeqOutput> first;
  ASSERT_TRUE(prefill
                  ->Submit(
                      Samples("x", prompt, 10, 3, 11),
                      [&](const SeqOutput& out) {
                        if (out.prefill_done) first = out;
                      },
                      SeqMode::kPrefillOnly, &sink)
                  .ok());
  while (!first) ASSERT_TRUE(prefill->Step());
  ASSERT_EQ(first->samples.size(), 3u);
  EXPECT_EQ(first->finish, FinishReason::kNone);
  prefill->Release("x");
  prefill->Step();
  EXPECT_EQ(prefill->cache().Stats().free_blocks, prefill->cache().config().n_blocks);

  std::vector<TokenId> firsts;
  for (const SampleFirstToken& t : first->samples) firsts.push_back(t.token);
  decode->Activate("x", firsts);
  RunSamplesUntilDone(decode.get(), &dec);
  ASSERT_TRUE(dec.error.ok()) << dec.error;
  for (int32_t i = 0; i < 3; ++i) {
    std::vector<TokenId> got = {firsts[i]};
    got.insert(got.end(), dec.by_index[i].tokens.begin(), dec.by_index[i].tokens.end());
    EXPECT_EQ(got, want.by_index[i].tokens) << "sample " << i;
    EXPECT_EQ(first->samples[i].text + dec.by_index[i].text, want.by_index[i].text) << i;
  }
  EXPECT_EQ(dec.total_completion_tokens, 30);
  EXPECT_EQ(decode->cache().Stats().free_blocks, decode->cache().config().n_blocks);
}

TEST(EngineSamples, ActivateWithTheWrongNumberOfFirstTokensFails) {
  auto engine = MakeEngine(LoadDummy(DummyModelSpec{}));
  SampleResults r;
  auto reserved = engine->Reserve(Samples("x", Tokens(9, 1), 4, 3, 1), CollectSamples(&r));
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  engine->Activate("x", std::vector<TokenId>{40, 41});
  engine->Step();
  EXPECT_EQ(r.error.code(), absl::StatusCode::kInvalidArgument) << r.error;
  EXPECT_EQ(engine->cache().Stats().free_blocks, engine->cache().config().n_blocks);
}

}  // namespace
}  // namespace pdserve::testing
