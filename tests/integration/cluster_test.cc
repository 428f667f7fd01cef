// The disaggregated cluster end to end: a router, one prefill node and one
// decode node as real processes on loopback, driven over the client API.
#include <cmath>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_harness.h"

namespace pdserve::itest {
namespace {

using ::testing::HasSubstr;

// Distinct prompts: different lengths, some sharing a prefix (so the prefix
// cache gets hits), plain ASCII and UTF-8.
const std::vector<std::string>& Prompts() {
  static const std::vector<std::string> kPrompts = {
      "The capital of France is",
      "Once upon a time, in a small village by the sea, there lived",
      "def fibonacci(n):",
      "The three primary colors are",
      "Water boils at a temperature of",
      "In 1969, the first humans to walk on the Moon were",
      "Translate to French: Good morning, how are you?",
      "The capital of France is Paris. The capital of Germany is",
      "List five fruits: apple, banana,",
      "Photosynthesis is the process by which plants",
      "Le café est très bon, mais le thé",
      "1, 2, 3, 5, 8, 13,",
  };
  return kPrompts;
}

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!HaveModel()) return;
    ClusterOptions o;
    auto c = Cluster::Start(o);
    if (c.ok()) {
      cluster_ = c->release();
    } else {
      start_error_ = new std::string(c.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete start_error_;
    start_error_ = nullptr;
  }
  void SetUp() override {
    if (!HaveModel()) GTEST_SKIP() << "model absent: run scripts/fetch_model.sh";
    ASSERT_NE(cluster_, nullptr) << "cluster did not start: " << *start_error_;
  }
  // Every test leaves both nodes' KV caches as it found them.
  void TearDown() override {
    if (cluster_ == nullptr) return;
    for (const std::string& id : cluster_->node_ids()) {
      EXPECT_TRUE(cluster_->WaitForIdleKv(id, absl::Seconds(30)))
          << id << " still holds KV blocks after the test";
    }
  }

  static Cluster* cluster_;
  static std::string* start_error_;
};
Cluster* ClusterTest::cluster_ = nullptr;
std::string* ClusterTest::start_error_ = nullptr;

const char* FinishName(v1::FinishReason r) { return v1::FinishReason_Name(r).c_str(); }

// Greedy output through prefill -> KV transfer -> decode must be the same
// tokens that one engine in one process produces.
TEST_F(ClusterTest, GreedyOutputMatchesSingleProcessGenerate) {
  constexpr int kMaxTokens = 12;
  int compared = 0;
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& prompt : Prompts()) {
    absl::StatusOr<ReferenceOutput> ref = ReferenceGenerate(prompt, kMaxTokens);
    ASSERT_TRUE(ref.ok()) << ref.status();
    ASSERT_FALSE(ref->token_ids.empty());
    StreamResult got = Generate(cluster_->generation(), GreedyRequest(prompt, kMaxTokens));
    ASSERT_TRUE(got.status.ok()) << prompt << ": " << got.status.error_message();
    ASSERT_TRUE(got.complete.has_value());
    EXPECT_EQ(got.token_ids, ref->token_ids) << "prompt '" << prompt << "'";
    EXPECT_EQ(got.complete->usage().prompt_tokens(), ref->prompt_tokens) << prompt;
    EXPECT_EQ(got.complete->usage().completion_tokens(), static_cast<int>(ref->token_ids.size()));
    EXPECT_EQ(got.complete->prefill_node(), "prefill-0");
    EXPECT_EQ(got.complete->decode_node(), "decode-0");
    const std::string want_finish =
        ref->finish_reason == "stop" ? "FINISH_REASON_STOP" : "FINISH_REASON_LENGTH";
    EXPECT_EQ(FinishName(got.complete->finish_reason()), want_finish) << prompt;
    expected.push_back(ref->token_ids);
    ++compared;
  }
  EXPECT_GE(compared, 10);

  // The same prompts all at once: continuous batching and the prefix cache
  // on both nodes must not change greedy output either.
  std::vector<StreamResult> results(Prompts().size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < Prompts().size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = Generate(cluster_->generation(), GreedyRequest(Prompts()[i], kMaxTokens));
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].token_ids, expected[i]) << "concurrent, prompt '" << Prompts()[i] << "'";
  }
  // The text the cluster streams is the answer a person asked for.
  StreamResult paris =
      Generate(cluster_->generation(), GreedyRequest("The capital of France is", 4));
  EXPECT_THAT(paris.text, HasSubstr("Paris"));
}

// 64 streams at once: every one completes, with usage that matches what
// was streamed and the finish reason each request asked for.
TEST_F(ClusterTest, SixtyFourConcurrentStreamsCompleteWithCorrectUsage) {
  auto file = gguf::GgufFile::Open(ModelPath());
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EncodeOptions enc;
  enc.add_special = true;

  // Learn each prompt's greedy continuation to build stop-token requests.
  constexpr int kLearn = 8;
  const int n_prompts = 8;
  std::vector<std::vector<int32_t>> learned(n_prompts);
  std::vector<int> prompt_len(n_prompts);
  for (int p = 0; p < n_prompts; ++p) {
    v1::GenerateRequest r = GreedyRequest(Prompts()[p], kLearn);
    r.mutable_stop()->set_ignore_eos(true);
    StreamResult got = Generate(cluster_->generation(), r);
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    ASSERT_EQ(got.token_ids.size(), size_t{kLearn});
    learned[p] = got.token_ids;
    auto ids = (*tok)->Encode(Prompts()[p], enc);
    ASSERT_TRUE(ids.ok());
    prompt_len[p] = static_cast<int>(ids->size());
  }

  struct Case {
    v1::GenerateRequest request;
    int prompt_tokens;
    int completion_tokens;
    v1::FinishReason finish;
  };
  std::vector<Case> cases;
  for (int i = 0; i < 64; ++i) {
    const int p = i % n_prompts;
    Case c;
    c.prompt_tokens = prompt_len[p];
    c.request = GreedyRequest(Prompts()[p], kLearn);
    c.request.mutable_stop()->set_ignore_eos(true);
    c.request.set_request_id(absl::StrCat("concurrent-", i));
    switch (i % 4) {
      case 0:  // runs to max_tokens
        c.completion_tokens = kLearn;
        c.finish = v1::FINISH_REASON_LENGTH;
        break;
      case 1:  // max_tokens 1: token #1 from the prefill node ends it
        c.request.mutable_stop()->set_max_tokens(1);
        c.completion_tokens = 1;
        c.finish = v1::FINISH_REASON_LENGTH;
        break;
      case 2: {  // a stop token id the decode node meets
        int k = 2;
        while (k < kLearn - 1 && std::find(learned[p].begin(), learned[p].begin() + k,
                                           learned[p][k]) != learned[p].begin() + k) {
          ++k;
        }
        c.request.mutable_stop()->add_stop_token_ids(learned[p][k]);
        c.completion_tokens = k + 1;
        c.finish = v1::FINISH_REASON_STOP;
        break;
      }
      case 3:  // stops at token #1
        c.request.mutable_stop()->add_stop_token_ids(learned[p][0]);
        c.completion_tokens = 1;
        c.finish = v1::FINISH_REASON_STOP;
        break;
    }
    cases.push_back(std::move(c));
  }

  std::vector<StreamResult> results(cases.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back(
        [&, i] { results[i] = Generate(cluster_->generation(), cases[i].request); });
  }
  for (std::thread& t : threads) t.join();

  for (size_t i = 0; i < cases.size(); ++i) {
    const StreamResult& r = results[i];
    const Case& c = cases[i];
    SCOPED_TRACE(absl::StrCat("stream ", i, " (case ", i % 4, ")"));
    ASSERT_TRUE(r.status.ok()) << r.status.error_code() << ": " << r.status.error_message();
    ASSERT_TRUE(r.complete.has_value());
    EXPECT_FALSE(r.error.has_value());
    EXPECT_EQ(r.complete->usage().prompt_tokens(), c.prompt_tokens);
    EXPECT_EQ(r.complete->usage().completion_tokens(), static_cast<int>(r.token_ids.size()));
    EXPECT_EQ(static_cast<int>(r.token_ids.size()), c.completion_tokens);
    EXPECT_EQ(r.last_chunk_usage.completion_tokens(), static_cast<int>(r.token_ids.size()));
    EXPECT_EQ(FinishName(r.complete->finish_reason()), std::string(FinishName(c.finish)));
    const std::vector<int32_t>& want = learned[i % n_prompts];
    EXPECT_TRUE(std::equal(r.token_ids.begin(), r.token_ids.end(), want.begin()))
        << "greedy tokens differ under load";
  }
}

// A client that cancels mid-stream frees the request's KV blocks on both
// nodes (TearDown checks the prefill node too).
TEST_F(ClusterTest, ClientCancelMidStreamReturnsKvBlocks) {
  ASSERT_TRUE(cluster_->WaitForIdleKv("decode-0", absl::Seconds(30)));
  v1::GenerateRequest r = GreedyRequest(Prompts()[1], 400);
  r.mutable_stop()->set_ignore_eos(true);
  int chunks = 0;
  int32_t free_while_streaming = -1, total = -1;
  StreamResult got =
      Generate(cluster_->generation(), r, absl::Seconds(120), [&](const v1::GenerateResponse& ev) {
        if (!ev.has_chunk() || ++chunks < 3) return true;
        auto load = cluster_->GetLoad("decode-0");
        if (load.ok()) {
          free_while_streaming = load->free_kv_blocks();
          total = load->total_kv_blocks();
        }
        return false;  // cancel
      });
  EXPECT_EQ(got.status.error_code(), grpc::StatusCode::CANCELLED) << got.status.error_message();
  EXPECT_FALSE(got.complete.has_value());
  ASSERT_GT(total, 0);
  EXPECT_LT(free_while_streaming, total) << "the stream held no KV blocks while running";
  EXPECT_TRUE(cluster_->WaitForIdleKv("decode-0", absl::Seconds(30)));
  EXPECT_TRUE(cluster_->WaitForIdleKv("prefill-0", absl::Seconds(30)));
}

// n > 1 through prefill -> KV transfer -> decode: one prefill, token #1 of
// every sample from the prefill node, the rest from the decode node's
// forks. Each sample streams under its index and ends on its own; usage sums
// the samples; a seeded request reproduces per sample.
TEST_F(ClusterTest, SamplesStreamByIndexEachWithItsOwnFinish) {
  auto run = [&](int max_tokens) {
    v1::GenerateRequest r = GreedyRequest(Prompts()[1], max_tokens);
    r.mutable_sampling()->set_temperature(1.0f);
    r.mutable_sampling()->set_seed(9);
    r.mutable_sampling()->set_n(3);
    r.mutable_stop()->set_ignore_eos(true);
    std::map<int32_t, std::vector<int32_t>> tokens;
    std::map<int32_t, v1::FinishReason> finish;
    StreamResult got = Generate(
        cluster_->generation(), r, absl::Seconds(120), [&](const v1::GenerateResponse& ev) {
          if (!ev.has_chunk()) return true;
          auto& t = tokens[ev.chunk().index()];
          t.insert(t.end(), ev.chunk().token_ids().begin(), ev.chunk().token_ids().end());
          if (ev.chunk().finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
            EXPECT_EQ(finish.count(ev.chunk().index()), 0u) << "finished twice";
            finish[ev.chunk().index()] = ev.chunk().finish_reason();
          }
          return true;
        });
    EXPECT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(finish.size(), 3u);
    for (const auto& [i, t] : tokens) EXPECT_EQ(t.size(), static_cast<size_t>(max_tokens)) << i;
    EXPECT_TRUE(got.complete.has_value());
    if (got.complete) EXPECT_EQ(got.complete->usage().completion_tokens(), 3 * max_tokens);
    return tokens;
  };
  auto first = run(10);
  ASSERT_EQ(first.size(), 3u);
  EXPECT_NE(first[0], first[1]);
  EXPECT_EQ(run(10), first);
}

// Generation.Abort by id ends a running stream with finish ABORT (and the
// tokens so far in usage), frees its KV, and a second request with the same
// id while the first is in flight is refused.
TEST_F(ClusterTest, AbortByIdEndsTheStreamAndFreesKv) {
  v1::GenerateRequest r = GreedyRequest(Prompts()[2], 400);
  r.mutable_stop()->set_ignore_eos(true);
  r.set_request_id("abort-me");
  int chunks = 0;
  StreamResult duplicate;
  v1::AbortResponse abort_resp;
  grpc::Status abort_status;
  StreamResult got =
      Generate(cluster_->generation(), r, absl::Seconds(120), [&](const v1::GenerateResponse& ev) {
        if (!ev.has_chunk() || ++chunks != 3) return true;
        duplicate = Generate(cluster_->generation(), r, absl::Seconds(30));
        grpc::ClientContext ctx;
        v1::AbortRequest req;
        req.set_request_id("abort-me");
        abort_status = cluster_->generation().Abort(&ctx, req, &abort_resp);
        return true;
      });
  EXPECT_EQ(duplicate.status.error_code(), grpc::StatusCode::ALREADY_EXISTS)
      << duplicate.status.error_message();
  ASSERT_TRUE(abort_status.ok()) << abort_status.error_message();
  EXPECT_TRUE(abort_resp.found());
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  ASSERT_TRUE(got.complete.has_value());
  EXPECT_EQ(got.complete->finish_reason(), v1::FINISH_REASON_ABORT);
  EXPECT_LT(static_cast<int>(got.token_ids.size()), 400);
  EXPECT_EQ(got.complete->usage().completion_tokens(), static_cast<int>(got.token_ids.size()));
  EXPECT_TRUE(cluster_->WaitForIdleKv("decode-0", absl::Seconds(30)));
  // The id is free again.
  v1::GenerateRequest again_req = GreedyRequest("Hello", 2);
  again_req.set_request_id("abort-me");
  StreamResult again = Generate(cluster_->generation(), again_req);
  EXPECT_TRUE(again.status.ok()) << again.status.error_message();
}

// Cancelling while the prefill node is still computing the prompt (before
// token #1) frees the blocks reserved on the decode node and the prefill
// node's blocks.
TEST_F(ClusterTest, ClientCancelDuringPrefillReturnsKvBlocks) {
  std::string long_prompt;
  for (int i = 0; i < 150; ++i) absl::StrAppend(&long_prompt, "word", i, " and ");
  v1::GenerateRequest r = GreedyRequest(long_prompt, 16);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  StreamResult got;
  std::thread caller(
      [&] { got = Generate(cluster_->generation(), r, absl::Seconds(120), nullptr, &ctx); });
  // Cancel as soon as the decode node reserved blocks for it.
  bool saw_reserved = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    auto load = cluster_->GetLoad("decode-0");
    if (load.ok() && load->awaiting_kv() > 0) {
      saw_reserved = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  ctx.TryCancel();
  caller.join();
  // Rarely the whole request ends before the test sees the reservation; the
  // blocks must be returned either way (no skip: that would hide a leak).
  if (saw_reserved) {
    EXPECT_EQ(got.status.error_code(), grpc::StatusCode::CANCELLED) << got.status.error_message();
  }
  EXPECT_TRUE(cluster_->WaitForIdleKv("decode-0", absl::Seconds(30)));
  EXPECT_TRUE(cluster_->WaitForIdleKv("prefill-0", absl::Seconds(30)));
}

// The stages on the critical path, each measured by the process that ran
// it, add up to the latency the client saw. Critical path of a request
// that reaches the decode node:
//   router.tokenize -> router.queue -> decode.wait_kv (Admit arrival to the
//   KV landing; covers prefill.queue, prefill.compute and the transfer
//   tail) -> decode.queue -> decode.first_step -> decode.generate (token #2
//   to the last token).
// What is left out is RPC transit (router -> decode Admit, decode's last
// event -> router -> client); it must stay within max(5%, 5 ms).
TEST_F(ClusterTest, StageTimingsAddUpToClientLatency) {
  const std::vector<std::string> kPath = {"router.tokenize",   "router.queue",
                                          "decode.wait_kv",    "decode.queue",
                                          "decode.first_step", "decode.generate"};
  // Warm the channel: connection setup is not part of a request.
  ASSERT_TRUE(Generate(cluster_->generation(), GreedyRequest("Hello", 2)).status.ok());
  double best_gap_ms = 1e9;
  std::string report;
  for (int attempt = 0; attempt < 3; ++attempt) {
    v1::GenerateRequest r = GreedyRequest(Prompts()[attempt], 12);
    r.mutable_stop()->set_ignore_eos(true);
    StreamResult got = Generate(cluster_->generation(), r);
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    ASSERT_TRUE(got.complete.has_value());
    std::map<std::string, int64_t> dur, end;
    for (const v1::StageTiming& t : got.complete->timings().stages()) {
      EXPECT_GE(t.duration_ns(), 0) << t.stage();
      dur[t.stage()] = t.duration_ns();
      end[t.stage()] = t.start_ns() + t.duration_ns();
    }
    // The KV transfer as the decode node saw it (first layer landed to the
    // last) overlaps the others and ends before the decode could start.
    ASSERT_TRUE(dur.count("kv.transfer")) << "stage kv.transfer missing";
    EXPECT_LE(end["kv.transfer"], end["decode.wait_kv"]);
    int64_t sum = 0;
    for (const std::string& s : kPath) {
      ASSERT_TRUE(dur.count(s)) << "stage " << s << " missing";
      sum += dur[s];
    }
    // Token #1 reached the client before the last token did.
    EXPECT_LT(got.complete->timings().ttft_ns(), got.complete->timings().e2e_ns());
    const double e2e_ms = got.client_e2e_ns / 1e6;
    const double sum_ms = sum / 1e6;
    // Disjoint intervals of one request cannot add up to more than it took.
    EXPECT_LE(sum_ms, e2e_ms + 0.5) << "stages overlap or are double counted";
    EXPECT_LE(got.complete->timings().e2e_ns(), got.client_e2e_ns);
    const double gap_ms = e2e_ms - sum_ms;
    absl::StrAppend(&report, "attempt ", attempt, ": client e2e ", e2e_ms, " ms, stages ", sum_ms,
                    " ms, gap ", gap_ms, " ms\n");
    best_gap_ms = std::min(best_gap_ms, gap_ms / std::max(1.0, std::max(0.05 * e2e_ms, 5.0)));
  }
  // Scheduling noise on a shared machine only widens the gap, so the best
  // of three is the measurement; it must be within max(5%, 5 ms).
  EXPECT_LE(best_gap_ms, 1.0) << report;
  std::cout << report;
}

// Invalid UTF-8 in a text prompt or a stop string is INVALID_ARGUMENT with
// a message that says so, and the cluster keeps serving. (Such a request
// does not even parse as proto3, so the router reads the raw bytes itself
// rather than let gRPC answer with an empty error; conforming clients,
// e.g. Python's, cannot send it at all.)
TEST_F(ClusterTest, InvalidUtf8IsInvalidArgument) {
  for (int field = 0; field < 2; ++field) {
    v1::GenerateRequest r = GreedyRequest("Hello", 4);
    if (field == 0) {
      r.set_text(std::string("caf\xc3(\xff\xfe", 7));
    } else {
      r.mutable_stop()->add_stop(std::string("\xff", 1));
    }
    StreamResult got = Generate(cluster_->generation(), r, absl::Seconds(30));
    EXPECT_EQ(got.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << "field " << field << ": " << got.status.error_code() << " "
        << got.status.error_message();
    EXPECT_THAT(got.status.error_message(), HasSubstr("UTF-8")) << "field " << field;
    EXPECT_TRUE(got.token_ids.empty());
    EXPECT_FALSE(got.complete.has_value());
  }
  StreamResult ok = Generate(cluster_->generation(), GreedyRequest("Hello", 3));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

// Requests a client got wrong fail at once with INVALID_ARGUMENT and a
// message that says what to fix; the cluster keeps serving.
TEST_F(ClusterTest, BadRequestsAreInvalidArgument) {
  grpc::ClientContext info_ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(
      cluster_->generation().GetModelInfo(&info_ctx, v1::GetModelInfoRequest(), &info).ok());
  const int n_ctx = info.context_length();
  ASSERT_GT(n_ctx, 16);

  struct Bad {
    std::string name;
    v1::GenerateRequest request;
    std::string message;
  };
  std::vector<Bad> cases;
  auto add = [&](std::string name, std::string message,
                 const std::function<void(v1::GenerateRequest*)>& edit) {
    Bad b{std::move(name), GreedyRequest("Hello there", 4), std::move(message)};
    edit(&b.request);
    cases.push_back(std::move(b));
  };
  add("empty prompt", "prompt is empty", [](auto* r) { r->set_text(""); });
  add("no prompt", "no prompt", [](auto* r) { r->clear_prompt(); });
  add("empty token ids", "prompt is empty", [](auto* r) { r->mutable_token_ids(); });
  add("prompt over the context (text)", "context", [&](auto* r) {
    std::string s;
    for (int i = 0; i < n_ctx + 10; ++i) s += " the";
    r->set_text(s);
  });
  add("prompt over the context (ids)", "context", [&](auto* r) {
    for (int i = 0; i < n_ctx; ++i) r->mutable_token_ids()->add_ids(100);
  });
  add("token id outside the vocabulary", "vocabulary",
      [&](auto* r) { r->mutable_token_ids()->add_ids(info.vocab_size()); });
  add("max_tokens 0", "max_tokens", [](auto* r) { r->mutable_stop()->set_max_tokens(0); });
  add("max_tokens negative", "max_tokens", [](auto* r) { r->mutable_stop()->set_max_tokens(-5); });
  add("max_tokens past the context", "context",
      [&](auto* r) { r->mutable_stop()->set_max_tokens(n_ctx); });
  add("NaN temperature", "temperature",
      [](auto* r) { r->mutable_sampling()->set_temperature(std::nanf("")); });
  add("negative temperature", "temperature",
      [](auto* r) { r->mutable_sampling()->set_temperature(-0.5f); });
  add("top_p 0", "top_p", [](auto* r) { r->mutable_sampling()->set_top_p(0.0f); });
  add("top_p above 1", "top_p", [](auto* r) { r->mutable_sampling()->set_top_p(1.5f); });
  add("top_p NaN", "top_p", [](auto* r) { r->mutable_sampling()->set_top_p(std::nanf("")); });
  add("top_k negative", "top_k", [](auto* r) { r->mutable_sampling()->set_top_k(-1); });
  add("stop string empty", "stop strings", [](auto* r) { r->mutable_stop()->add_stop(""); });
  add("presence_penalty out of range", "presence_penalty",
      [](auto* r) { r->mutable_sampling()->set_presence_penalty(3.0f); });

  for (const Bad& b : cases) {
    StreamResult got = Generate(cluster_->generation(), b.request, absl::Seconds(30));
    EXPECT_EQ(got.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << b.name << ": " << got.status.error_code() << " " << got.status.error_message();
    EXPECT_THAT(got.status.error_message(), HasSubstr(b.message)) << b.name;
    EXPECT_TRUE(got.token_ids.empty()) << b.name;
  }
  // Still serving.
  StreamResult ok = Generate(cluster_->generation(), GreedyRequest("Hello", 3));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_TRUE(cluster_->router_process().Running());
  for (const std::string& id : cluster_->node_ids()) {
    EXPECT_TRUE(cluster_->node_process(id).Running()) << id;
  }
}

}  // namespace
}  // namespace pdserve::itest
