// pdserve bench: prefill and decode throughput of the engine on this
// machine, with the memory bandwidth measured in the same run so decode can
// be read as a fraction of what the hardware streams.
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <numeric>
#include <thread>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/engine_flags.h"
#include "common/clock.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "nlohmann/json.hpp"
#include "planner/cost_model.h"

namespace pdserve::cli {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Streaming read bandwidth (GB/s) of a buffer much larger than the caches,
// read by the same number of threads the engine uses.
double MeasureReadBandwidth(kernels::ThreadPool* pool, size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = i;  // commit the pages
  std::vector<double> gbs;
  std::vector<uint64_t> sink(pool->size() * 8);
  for (int r = 0; r < reps; ++r) {
    const int64_t t0 = MonoNowNs();
    pool->Run([&](int ith, int nth) {
      int64_t a, b;
      kernels::SplitRange(static_cast<int64_t>(n), ith, nth, 4096, &a, &b);
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = a; i + 3 < b; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      sink[ith * 8] = s0 + s1 + s2 + s3;
    });
    gbs.push_back(static_cast<double>(bytes) / (MonoNowNs() - t0));
  }
  return Median(gbs);
}

// Pins the calling thread to `cpus` (a peer engine's prompt runs there).
void PinThread(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

struct Run {
  std::unique_ptr<Engine> engine;
  std::vector<int> done;
  std::vector<int> tokens;
};

// Submits n requests, returns once every one has its first token.
absl::Status StartRequests(Engine* engine, Run* run, int n, const std::vector<TokenId>& prompt,
                           int max_tokens, const std::string& tag) {
  run->done.assign(n, 0);
  run->tokens.assign(n, 0);
  for (int i = 0; i < n; ++i) {
    RequestSpec s;
    s.id = tag + std::to_string(i);
    s.prompt = prompt;
    s.prompt[0] = (prompt[0] + i) % 1000 + 10;  // distinct sequences, no prefix sharing
    s.sampling.temperature = 0;
    s.stop.max_tokens = max_tokens;
    s.stop.ignore_eos = true;
    absl::Status st = engine->Submit(std::move(s), [run, i](const SeqOutput& out) {
      run->tokens[i] += static_cast<int>(out.tokens.size());
      if (out.finish != FinishReason::kNone) run->done[i] = 1;
    });
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

// --profile: times single engine steps of known shapes (prefill batches,
// decode batches at several contexts, and mixed steps), fits the planner's
// step cost model to them and writes a device profile.
class StepProfiler {
 public:
  StepProfiler(Engine* engine, int reps, int vocab) : engine_(engine), reps_(reps), vocab_(vocab) {}

  // `batch` prompts of `n` tokens computed in one step.
  absl::Status Prefill(int n, int batch) {
    for (int r = 0; r < reps_; ++r) {
      Run run;
      PDS_RETURN_IF_ERROR(StartRequests(engine_, &run, batch, Prompt(n), 1, Tag("p")));
      const int64_t t0 = MonoNowNs();
      engine_->Step();
      const double s = (MonoNowNs() - t0) / 1e9;
      while (std::accumulate(run.done.begin(), run.done.end(), 0) < batch) {
        if (!engine_->Step()) return absl::InternalError("bench: prefill requests did not finish");
      }
      planner::StepShape shape;
      shape.prefill_tokens = static_cast<int64_t>(n) * batch;
      shape.attention_pairs = batch * planner::ChunkAttentionPairs(0, n);
      samples_.push_back({shape, s});
    }
    return absl::OkStatus();
  }

  // `batch` sequences with prompts of `ctx` tokens. Once all are decoding
  // (their prefill just ended), times `post_steps` decode steps as
  // post-prefill samples; then decodes untimed until `settle_s` has passed
  // since the prefill (at most `settle_steps` steps) and times `steps` more
  // as steady samples; then one step that also computes a
  // `mixed_prompt`-token prompt (0: none).
  absl::Status Decode(int batch, int ctx, int post_steps, double settle_s, int settle_steps,
                      int steps, int mixed_prompt) {
    Run run;
    PDS_RETURN_IF_ERROR(BeginDecoding(&run, batch, ctx, post_steps + settle_steps + steps));
    const int64_t prefill_end = MonoNowNs();
    PostPrefillRun post;
    TimeStepsAfter(prefill_end, post_steps, run, ctx, &post);
    PDS_RETURN_IF_ERROR(Settle(prefill_end, settle_s, settle_steps));
    TimeSteadySteps(steps, run, ctx, &post);
    samples_.insert(samples_.end(), post.steady.begin(), post.steady.end());
    post_prefill_.push_back(std::move(post));
    if (mixed_prompt > 0) {
      Run extra;
      PDS_RETURN_IF_ERROR(StartRequests(engine_, &extra, 1, Prompt(mixed_prompt), 1, Tag("m")));
      planner::StepShape shape = DecodeShape(run, ctx);
      shape.prefill_tokens = mixed_prompt;
      shape.attention_pairs = planner::ChunkAttentionPairs(0, mixed_prompt);
      const int64_t t0 = MonoNowNs();
      engine_->Step();
      samples_.push_back({shape, (MonoNowNs() - t0) / 1e9});
      if (!extra.done[0])
        return absl::InternalError("bench: the mixed step did not compute the prompt");
    }
    EndDecoding(batch);
    return absl::OkStatus();
  }

  // `batch` sequences with prompts of `ctx` tokens decode until their
  // steps are steady (`settle_s` after their prefill, at most
  // `settle_steps` steps) and `steps` of them are timed; then, while they
  // wait, `peer` (another engine on other CPUs of this host, as another
  // node) computes a `peer_prompt`-token prompt on a thread pinned to
  // `peer_cpus`, and `post_steps` decode steps are timed right after it:
  // one post-peer-prefill run.
  absl::Status AfterPeerPrefill(Engine* peer, const std::vector<int>& peer_cpus, int peer_prompt,
                                int batch, int ctx, double settle_s, int settle_steps, int steps,
                                int post_steps) {
    Run run;
    PDS_RETURN_IF_ERROR(BeginDecoding(&run, batch, ctx, settle_steps + steps + post_steps));
    PDS_RETURN_IF_ERROR(Settle(MonoNowNs(), settle_s, settle_steps));
    PostPrefillRun post;
    TimeSteadySteps(steps, run, ctx, &post);
    int64_t peer_end = 0;
    PDS_RETURN_IF_ERROR(PeerPrompt(peer, peer_cpus, peer_prompt, &peer_end));
    TimeStepsAfter(peer_end, post_steps, run, ctx, &post);
    post_peer_prefill_.push_back(std::move(post));
    EndDecoding(batch);
    return absl::OkStatus();
  }

  // `peer` computes a `n`-token prompt on a thread pinned to `cpus`; *end
  // is when it finished.
  absl::Status PeerPrompt(Engine* peer, const std::vector<int>& cpus, int n, int64_t* end) {
    absl::Status st;
    std::thread t([&] {
      PinThread(cpus);
      Run prompt;
      st = StartRequests(peer, &prompt, 1, Prompt(n), 1, Tag("q"));
      while (st.ok() && !prompt.done[0]) {
        if (!peer->Step()) st = absl::InternalError("bench: the peer's prompt stalled");
      }
      *end = MonoNowNs();
    });
    t.join();
    return st;
  }

  const std::vector<planner::StepSample>& samples() const { return samples_; }
  // One decode configuration's steps timed right after a prefill (its own,
  // or a peer's), and its steady steps.
  struct PostPrefillRun {
    std::vector<planner::PostPrefillSample> steps;
    std::vector<planner::StepSample> steady;
  };
  const std::vector<PostPrefillRun>& post_prefill() const { return post_prefill_; }
  const std::vector<PostPrefillRun>& post_peer_prefill() const { return post_peer_prefill_; }

 private:
  // Ids 100.. (past most special tokens), inside the vocabulary.
  std::vector<TokenId> Prompt(int n) const {
    const int first = vocab_ > 200 ? 100 : 0;
    const int span = std::min(20000, vocab_ - first);
    std::vector<TokenId> prompt(n);
    for (int i = 0; i < n; ++i) prompt[i] = first + (i * 37) % span;
    return prompt;
  }
  // Starts `batch` sequences with prompts of `ctx` tokens, room for `steps`
  // decode steps and more, and steps until every one has its first token.
  absl::Status BeginDecoding(Run* run, int batch, int ctx, int steps) {
    const int slack = 16;  // sequences that start early must not finish in the timed steps
    PDS_RETURN_IF_ERROR(
        StartRequests(engine_, run, batch, Prompt(ctx), 1 + steps + slack, Tag("d")));
    while (std::count(run->tokens.begin(), run->tokens.end(), 0) > 0) {
      if (!engine_->Step()) return absl::InternalError("bench: decode requests stalled");
    }
    return absl::OkStatus();
  }
  // The next decode step's shape: one token for each of the run's sequences.
  static planner::StepShape DecodeShape(const Run& run, int ctx) {
    planner::StepShape shape;
    shape.decode_seqs = static_cast<int32_t>(run.tokens.size());
    for (int t : run.tokens) shape.decode_context += ctx + t;
    return shape;
  }
  // Times `n` decode steps, each with its start's distance from `since_ns`.
  void TimeStepsAfter(int64_t since_ns, int n, const Run& run, int ctx, PostPrefillRun* post) {
    for (int i = 0; i < n; ++i) {
      planner::PostPrefillSample x;
      x.shape = DecodeShape(run, ctx);
      const int64_t t0 = MonoNowNs();
      engine_->Step();
      x.since_s = (t0 - since_ns) / 1e9;
      x.seconds = (MonoNowNs() - t0) / 1e9;
      post->steps.push_back(x);
    }
  }
  // Times `n` decode steps as the run's steady ones.
  void TimeSteadySteps(int n, const Run& run, int ctx, PostPrefillRun* post) {
    for (int i = 0; i < n; ++i) {
      const planner::StepShape shape = DecodeShape(run, ctx);
      const int64_t t0 = MonoNowNs();
      engine_->Step();
      post->steady.push_back({shape, (MonoNowNs() - t0) / 1e9});
    }
  }
  // Decodes untimed until `settle_s` has passed since `since_ns`, at most
  // `max_steps` steps.
  absl::Status Settle(int64_t since_ns, double settle_s, int max_steps) {
    for (int i = 0; i < max_steps && (MonoNowNs() - since_ns) / 1e9 < settle_s; ++i) {
      if (!engine_->Step()) return absl::InternalError("bench: decode requests stalled");
    }
    return absl::OkStatus();
  }
  // Aborts the last decode run's `batch` sequences and drains the engine.
  void EndDecoding(int batch) {
    for (int i = 0; i < batch; ++i) engine_->Abort(last_tag_ + std::to_string(i));
    while (engine_->Step()) {
    }
  }
  std::string Tag(const char* kind) {
    std::string tag = absl::StrCat("prof-", kind, next_++, "-");
    if (kind[0] == 'd') last_tag_ = tag;
    return tag;
  }

  Engine* engine_;
  int reps_;
  int vocab_;
  int next_ = 0;
  std::string last_tag_;
  std::vector<planner::StepSample> samples_;
  std::vector<PostPrefillRun> post_prefill_;
  std::vector<PostPrefillRun> post_peer_prefill_;
};

// Each step's shape, measured and fitted time, for the profile's notes;
// sets the fit's rms and worst relative error.
nlohmann::json StepsJson(const std::vector<planner::StepSample>& samples,
                         const planner::StepCost& fit, double* rms, double* worst) {
  nlohmann::json steps = nlohmann::json::array();
  double sum_sq = 0;
  *worst = 0;
  for (const planner::StepSample& s : samples) {
    const double predicted = fit.Seconds(s.shape);
    const double rel = predicted / s.seconds - 1;
    *worst = std::max(*worst, std::abs(rel));
    sum_sq += rel * rel;
    steps.push_back({{"prefill_tokens", s.shape.prefill_tokens},
                     {"attention_pairs", s.shape.attention_pairs},
                     {"decode_seqs", s.shape.decode_seqs},
                     {"decode_context", s.shape.decode_context},
                     {"measured_s", s.seconds},
                     {"fitted_s", predicted}});
  }
  *rms = std::sqrt(sum_sq / static_cast<double>(samples.size()));
  return steps;
}

// --profile-alone: this run timed the node beside a co-running load; its fit
// becomes the co-run cost of the profile measured alone, written to `path`.
int WriteCoRunProfile(const std::string& alone_path, const std::string& load,
                      const std::vector<planner::StepSample>& samples, const planner::StepCost& fit,
                      int threads, const std::string& model_name, double measure_s,
                      const std::string& path) {
  absl::StatusOr<planner::DeviceProfile> alone = planner::LoadProfile(alone_path);
  if (!alone.ok()) return Fail("bench", std::string(alone.status().message()));
  if (alone->threads != threads || alone->model != model_name) {
    return Fail("bench", absl::StrCat("--profile-alone ", alone_path, " is ", alone->model, " on ",
                                      alone->threads, " threads; this run is ", model_name, " on ",
                                      threads));
  }
  planner::DeviceProfile p = *alone;
  double rms = 0, worst = 0;
  nlohmann::json steps = StepsJson(samples, fit, &rms, &worst);
  p.step_co_run = fit;
  p.co_run_source = absl::StrCat("pdserve bench --profile --profile-alone: ", samples.size(),
                                 " engine steps timed while ", load,
                                 ", fitted by least squares (rms relative error ", rms, ")");
  p.notes["co_run_fit_rms_relative_error"] = rms;
  p.notes["co_run_fit_max_relative_error"] = worst;
  p.notes["co_run_measure_seconds"] = measure_s;
  p.notes["co_run_steps"] = steps;
  if (absl::Status s = p.Validate(); !s.ok()) return Fail("bench", std::string(s.message()));
  if (absl::Status s = planner::SaveProfile(p, path); !s.ok())
    return Fail("bench", std::string(s.message()));
  nlohmann::ordered_json summary = planner::ProfileToJson(p);
  summary.erase("notes");
  summary["co_run_fit_rms_relative_error"] = rms;
  summary["co_run_fit_max_relative_error"] = worst;
  summary["co_run_measure_seconds"] = measure_s;
  std::cout << summary.dump(2) << std::endl;
  std::fprintf(stderr, "pdserve bench: wrote %s with its co-run cost to %s\n", alone_path.c_str(),
               path.c_str());
  return 0;
}

// How long after a prefill decode steps count as steady (see
// planner::PostPrefillCost): on a 2-vCPU Xeon VM a batch-1 decode step right
// after a prefill ran slower than a steady one for a few hundred ms.
constexpr double kSettleS = 0.5;
// Decode steps timed after a prefill, per small-batch configuration.
constexpr int kPostSteps = 32;

// Each step right after a prefill against its run's steady steps, moved to
// the step's own context with the fitted per-token cost.
std::vector<planner::PostPrefillSample> PostPrefillSamples(
    const std::vector<StepProfiler::PostPrefillRun>& runs, const planner::StepCost& fit) {
  std::vector<planner::PostPrefillSample> out;
  for (const StepProfiler::PostPrefillRun& run : runs) {
    double steady_s = 0, steady_fit = 0;
    for (const planner::StepSample& x : run.steady) {
      steady_s += x.seconds / static_cast<double>(run.steady.size());
      steady_fit += fit.Seconds(x.shape) / static_cast<double>(run.steady.size());
    }
    for (planner::PostPrefillSample x : run.steps) {
      x.steady_s = std::max(1e-9, steady_s + fit.Seconds(x.shape) - steady_fit);
      out.push_back(x);
    }
  }
  return out;
}

// The samples with their fitted time, for the profile's notes.
nlohmann::json PostPrefillJson(const std::vector<planner::PostPrefillSample>& samples,
                               const planner::PostPrefillCost& cost) {
  nlohmann::json steps = nlohmann::json::array();
  for (const planner::PostPrefillSample& x : samples) {
    steps.push_back({{"decode_seqs", x.shape.decode_seqs},
                     {"decode_context", x.shape.decode_context},
                     {"since_prefill_s", x.since_s},
                     {"measured_s", x.seconds},
                     {"steady_s", x.steady_s},
                     {"fitted_s", x.steady_s + cost.ExtraSeconds(x.since_s, x.shape.decode_seqs)}});
  }
  return steps;
}

// The profile's decode configurations (batch, context, mixed-step prompt).
// Batch 2 at 512: where a lightly loaded node spends its steps (a serving
// node's decode batches were mostly 1 to 3 in plan_validate's runs).
constexpr std::tuple<int, int, int> kDecodeConfigs[] = {
    {1, 32, 0},  {1, 1024, 256}, {2, 512, 0},   {4, 32, 0},   {4, 256, 256},
    {16, 32, 0}, {16, 256, 256}, {8, 512, 256}, {32, 32, 128}};

// The peer's side of --peer-cpus: an engine of the same model and flags on
// those CPUs (another node of this host, with its own copy of the weights).
struct Peer {
  Engine* engine = nullptr;  // null: no peer measurement
  std::vector<int> cpus;
  int prompt_tokens = 512;
};

int RunProfile(Engine* engine, const Model& model, const EngineFlags& ef, int64_t kv_blocks,
               int reps, const std::string& path, const std::string& alone_path,
               const std::string& co_run_load, const Peer& peer) {
  const int64_t start_ns = MonoNowNs();
  StepProfiler prof(engine, reps, model.config().n_vocab);
  absl::Status st;
  auto run = [&](absl::Status s) {
    if (st.ok()) st = s;
  };
  run(prof.Prefill(64, 1));  // warm-up, dropped below
  const size_t warm = prof.samples().size();
  for (auto [n, batch] : {std::pair{32, 1}, {128, 1}, {512, 1}, {1024, 1}, {128, 4}, {512, 2}}) {
    run(prof.Prefill(n, batch));
  }
  for (auto [batch, ctx, mixed] : kDecodeConfigs) {
    // Small batches, where the effect shows, long enough to see it fade
    // (about 20 steps on the Xeon VM).
    run(prof.Decode(batch, ctx, /*post_steps=*/batch <= 4 ? kPostSteps : 8, kSettleS,
                    /*settle_steps=*/64, /*steps=*/8, mixed));
  }
  if (peer.engine != nullptr) {
    int64_t end = 0;
    run(prof.PeerPrompt(peer.engine, peer.cpus, peer.prompt_tokens, &end));  // warm-up
    for (int r = 0; r < 2; ++r) {
      for (auto [batch, ctx] : {std::pair{1, 32}, {1, 512}, {4, 256}}) {
        run(prof.AfterPeerPrefill(peer.engine, peer.cpus, peer.prompt_tokens, batch, ctx, kSettleS,
                                  /*settle_steps=*/64, /*steps=*/8, kPostSteps));
      }
    }
  }
  if (!st.ok()) return Fail("bench", std::string(st.message()));
  std::vector<planner::StepSample> samples(
      prof.samples().begin() + static_cast<std::ptrdiff_t>(warm), prof.samples().end());
  absl::StatusOr<planner::StepCost> fit = planner::FitStepCost(samples);
  if (!fit.ok()) return Fail("bench", std::string(fit.status().message()));
  const ModelConfig& c = model.config();
  if (!alone_path.empty()) {
    return WriteCoRunProfile(alone_path, co_run_load, samples, *fit, engine->n_threads(), c.name,
                             (MonoNowNs() - start_ns) / 1e9, path);
  }

  planner::DeviceProfile p;
  p.model = c.name;
  p.threads = engine->n_threads();
  p.name = absl::StrCat(engine->backend_name(), "-", p.threads, "t ", c.name);
  p.source = absl::StrCat("pdserve bench --profile: ", samples.size(),
                          " engine steps timed on this machine and fitted by least squares");
  p.n_layers = c.n_layers;
  p.block_size = engine->cache().config().block_size;
  p.kv_bytes_per_token = engine->cache().config().BlockBytes() / p.block_size;
  p.kv_blocks = kv_blocks;
  p.max_batch_tokens = ef.options.max_batch_tokens;
  p.max_batch_seqs = ef.options.max_batch_seqs;
  p.step = *fit;
  const std::vector<planner::PostPrefillSample> post_samples =
      PostPrefillSamples(prof.post_prefill(), p.step);
  absl::StatusOr<planner::PostPrefillCost> post = planner::FitPostPrefillCost(post_samples);
  if (!post.ok()) return Fail("bench", std::string(post.status().message()));
  p.post_prefill = *post;
  p.post_prefill_source = absl::StrCat(
      "pdserve bench --profile: ", post_samples.size(),
      " decode steps timed right after their prompts' prefill (the first ", kPostSteps,
      " of each decode configuration of at most 4 sequences, 8 of the others), each against its "
      "configuration's steps timed ",
      kSettleS, " s (or 64 steps) after the prefill; least squares");
  if (peer.engine != nullptr) {
    const std::vector<planner::PostPrefillSample> peer_samples =
        PostPrefillSamples(prof.post_peer_prefill(), p.step);
    absl::StatusOr<planner::PostPrefillCost> fit_peer = planner::FitPostPrefillCost(peer_samples);
    if (!fit_peer.ok()) return Fail("bench", std::string(fit_peer.status().message()));
    p.post_peer_prefill = *fit_peer;
    p.post_peer_prefill_source = absl::StrCat(
        "pdserve bench --profile --peer-cpus: ", peer_samples.size(),
        " decode steps timed right after a peer engine (same model and flags, its own weights) "
        "computed a ",
        peer.prompt_tokens, "-token prompt on CPUs ", absl::StrJoin(peer.cpus, ","),
        " while these sequences waited (", kPostSteps,
        " steps each of batch 1 at 32 and 512 tokens of context and batch 4 at 256, twice), "
        "each against the same sequences' steady steps right before; least squares");
    p.notes["post_peer_prefill_steps"] = PostPrefillJson(peer_samples, *p.post_peer_prefill);
  }
  // Loopback TCP as kv_transfer_bench measures it (docs/performance.md:
  // 0.9-2.2 GB/s) and the router's added latency (router_overhead_bench:
  // 0.7-1 ms p50); neither is measured here.
  p.link.bandwidth_bytes_per_s = 1e9;
  p.link.latency_s = 0.0002;
  p.router_overhead_s = 0.001;
  double rms = 0, worst = 0;
  nlohmann::json steps = StepsJson(samples, p.step, &rms, &worst);
  p.notes["post_prefill_steps"] = PostPrefillJson(post_samples, *p.post_prefill);
  p.notes["device"] = engine->backend_name();
  p.notes["isa"] = kernels::IsaName(kernels::ActiveIsa());
  p.notes["model_path"] = ef.model_path;
  p.notes["fit_rms_relative_error"] = rms;
  p.notes["fit_max_relative_error"] = worst;
  p.notes["link_and_router"] =
      "not measured by this run: loopback TCP 1 GB/s and 0.2 ms (kv_transfer_bench), router 1 ms "
      "(router_overhead_bench), docs/performance.md";
  p.notes["measure_seconds"] = (MonoNowNs() - start_ns) / 1e9;
  p.notes["steps"] = steps;
  if (absl::Status s = p.Validate(); !s.ok()) return Fail("bench", std::string(s.message()));
  if (absl::Status s = planner::SaveProfile(p, path); !s.ok())
    return Fail("bench", std::string(s.message()));
  nlohmann::ordered_json summary = planner::ProfileToJson(p);
  summary.erase("notes");
  summary["fit_rms_relative_error"] = rms;
  summary["fit_max_relative_error"] = worst;
  summary["measure_seconds"] = p.notes["measure_seconds"].get<double>();
  std::cout << summary.dump(2) << std::endl;
  std::fprintf(stderr, "pdserve bench: wrote the profile to %s\n", path.c_str());
  return 0;
}

int RunBench(int argc, char** argv) {
  po::options_description desc("bench flags");
  AddCommonFlags(&desc);
  AddEngineFlags(&desc);
  // clang-format off
  desc.add_options()
      ("prompt-tokens", po::value<int>()->default_value(512), "prefill test: prompt length")
      ("gen-tokens", po::value<int>()->default_value(128), "decode test: tokens per sequence")
      ("batch", po::value<std::vector<int>>()->multitoken()->default_value({1, 8, 32}, "1 8 32"),
       "decode batch sizes")
      ("reps", po::value<int>()->default_value(3), "repetitions (the median is reported)")
      ("bandwidth-mib", po::value<int>()->default_value(1024), "buffer for the bandwidth test")
      ("json", po::bool_switch(), "print one JSON object")
      ("profile", po::value<std::string>()->default_value(""),
       "instead: time engine steps of many shapes, fit the planner's cost model, write a device "
       "profile JSON here (for pdserve plan; about a minute)")
      ("profile-alone", po::value<std::string>()->default_value(""),
       "with --profile: this run times the node while another node's load runs on the host's "
       "other cores; the profile FILE (the same node measured alone) is written to --profile with "
       "this run's fit as its co-run cost (step_co_run)")
      ("co-run-load", po::value<std::string>()->default_value(""),
       "with --profile-alone: what ran beside this run (recorded in the profile)")
      ("peer-cpus", po::value<std::string>()->default_value(""),
       "with --profile: also time decode steps right after a peer engine (another node of this "
       "host: the same model and flags, its own copy of the weights) pinned to these CPUs "
       "(comma-separated ids) computed a --prompt-tokens prompt; fitted as the profile's "
       "post_peer_prefill cost");
  // clang-format on
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "[flags]", desc, &vm); rc >= 0) return rc;
  EngineFlags ef;
  if (absl::Status s = ReadEngineFlags(vm, &ef); !s.ok())
    return Fail("bench", std::string(s.message()));
  const int n_prompt = vm["prompt-tokens"].as<int>();
  const int n_gen = vm["gen-tokens"].as<int>();
  const int reps = std::max(1, vm["reps"].as<int>());
  std::vector<int> batches = vm["batch"].as<std::vector<int>>();
  if (n_prompt < 1 || n_gen < 2) return Fail("bench", "--prompt-tokens >= 1 and --gen-tokens >= 2");
  for (int b : batches) {
    if (b < 1 || b > 256) return Fail("bench", "--batch sizes must be in [1, 256]");
  }

  auto loaded = LoadModel(ef);
  if (!loaded.ok()) return Fail("bench", std::string(loaded.status().message()));
  std::shared_ptr<const Model> model = std::move(*loaded);
  const ModelConfig& c = model->config();
  if (n_prompt + 1 >= model->n_ctx() || n_gen + 2 >= model->n_ctx()) {
    return Fail("bench", "prompt or generation longer than the context");
  }
  const std::string profile_path = vm["profile"].as<std::string>();
  if (!vm["profile-alone"].as<std::string>().empty() &&
      (profile_path.empty() || vm["co-run-load"].as<std::string>().empty())) {
    return Fail("bench", "--profile-alone needs --profile and --co-run-load (what ran beside it)");
  }
  std::vector<int> peer_cpus;
  if (const std::string pc = vm["peer-cpus"].as<std::string>(); !pc.empty()) {
    if (profile_path.empty() || !vm["profile-alone"].as<std::string>().empty()) {
      return Fail("bench", "--peer-cpus needs --profile, without --profile-alone");
    }
    for (absl::string_view part : absl::StrSplit(pc, ',')) {
      int cpu;
      if (!absl::SimpleAtoi(part, &cpu) || cpu < 0 || cpu >= CPU_SETSIZE) {
        return Fail("bench", absl::StrCat("--peer-cpus: bad CPU id '", part, "'"));
      }
      peer_cpus.push_back(cpu);
    }
  }
  if (!profile_path.empty()) batches.push_back(32);  // the profile's largest decode batch
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  EngineOptions o = ef.options;
  if (!profile_path.empty()) o.max_batch_tokens = std::max(o.max_batch_tokens, 1024);
  o.max_batch_tokens = std::max({o.max_batch_tokens, n_prompt, max_batch});
  o.max_batch_seqs = std::max(o.max_batch_seqs, max_batch);
  o.prefix_cache = false;  // repetitions must recompute
  // Room for the largest decode batch.
  const int64_t need_blocks =
      static_cast<int64_t>(max_batch) * ((n_gen + 2 + o.block_size) / o.block_size + 1) +
      (n_prompt + o.block_size) / o.block_size + 8;
  o.kv_blocks = static_cast<int32_t>(std::max<int64_t>(o.kv_blocks, need_blocks));
  if (!profile_path.empty()) {
    // Room for the largest profile step (16 sequences of 256 + 24 tokens).
    o.kv_blocks = std::max(o.kv_blocks, 16 * ((256 + 32 + o.block_size) / o.block_size + 1) + 128);
  }
  auto created = Engine::Create(model, o);
  if (!created.ok()) return Fail("bench", std::string(created.status().message()));
  Engine* engine = created->get();
  if (!profile_path.empty()) {
    // The KV capacity a node started with the same flags has.
    const int64_t block_bytes = engine->cache().config().BlockBytes();
    const int64_t node_blocks =
        ef.options.kv_blocks > 0 ? ef.options.kv_blocks : ef.options.kv_cache_bytes / block_bytes;
    Peer peer;
    std::unique_ptr<Engine> peer_engine;
    if (!peer_cpus.empty()) {
      EngineOptions po = o;
      po.n_threads = static_cast<int>(peer_cpus.size());
      po.pin_cpus = peer_cpus;
      auto made = Engine::Create(model, po);
      if (!made.ok()) return Fail("bench", std::string(made.status().message()));
      peer_engine = std::move(*made);
      peer = Peer{peer_engine.get(), peer_cpus, n_prompt};
    }
    return RunProfile(engine, *model, ef, node_blocks, reps, profile_path,
                      vm["profile-alone"].as<std::string>(), vm["co-run-load"].as<std::string>(),
                      peer);
  }

  // Prefill: one prompt of n_prompt tokens, timed over the step that computes it.
  std::vector<double> prefill;
  std::vector<TokenId> prompt(n_prompt);
  for (int i = 0; i < n_prompt; ++i) prompt[i] = 100 + (i * 37) % 20000;
  for (int r = 0; r < reps + 1; ++r) {
    Run run;
    if (absl::Status s = StartRequests(engine, &run, 1, prompt, 1, "p" + std::to_string(r) + "-");
        !s.ok()) {
      return Fail("bench", std::string(s.message()));
    }
    const int64_t t0 = MonoNowNs();
    while (!run.done[0]) engine->Step();
    if (r > 0) prefill.push_back(n_prompt * 1e9 / (MonoNowNs() - t0));  // first run warms up
  }

  // Decode at each batch size: sequences start from a one-token prompt (as
  // llama-bench's tg test does); timed once all are decoding.
  nlohmann::json decode = nlohmann::json::object();
  double decode_b1 = 0;
  for (int b : batches) {
    std::vector<double> tps;
    for (int r = 0; r < reps; ++r) {
      Run run;
      const std::string tag = "d" + std::to_string(b) + "-" + std::to_string(r) + "-";
      if (absl::Status s = StartRequests(engine, &run, b, {prompt[0]}, n_gen, tag); !s.ok()) {
        return Fail("bench", std::string(s.message()));
      }
      // First step computes the prompts and the first tokens.
      while (std::accumulate(run.tokens.begin(), run.tokens.end(), 0) < b) engine->Step();
      const int before = std::accumulate(run.tokens.begin(), run.tokens.end(), 0);
      const int64_t t0 = MonoNowNs();
      while (std::accumulate(run.done.begin(), run.done.end(), 0) < b) engine->Step();
      const int after = std::accumulate(run.tokens.begin(), run.tokens.end(), 0);
      tps.push_back((after - before) * 1e9 / (MonoNowNs() - t0));
    }
    decode[std::to_string(b)] = Median(tps);
    if (b == 1) decode_b1 = Median(tps);
  }

  rusage ru;  // before the bandwidth buffer inflates it
  getrusage(RUSAGE_SELF, &ru);
  kernels::ThreadPool bw_pool(engine->n_threads());
  const double bw_gbs = MeasureReadBandwidth(
      &bw_pool, static_cast<size_t>(vm["bandwidth-mib"].as<int>()) << 20, reps + 1);

  // Bytes one batch-1 decode step reads: every weight matrix once (the
  // tied output matrix too), norms, one embedding row, and the KV cache at
  // the mean context of the run.
  const ModelWeights& w = model->weights();
  int64_t weight_bytes = 0;
  for (const LayerWeights& l : w.layers) {
    for (const kernels::WeightMatrix* m :
         {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      weight_bytes += kernels::RowBytes(m->type, m->n_in) * m->n_out;
    }
    weight_bytes += 2 * c.n_embd * 4;
  }
  weight_bytes += kernels::RowBytes(w.output.type, w.output.n_in) * w.output.n_out;
  const int64_t kv_bytes_per_token = engine->cache().config().BlockBytes() / o.block_size;
  const double mean_ctx = 1 + n_gen / 2.0;
  const double bytes_per_token = weight_bytes + kv_bytes_per_token * mean_ctx;
  const double decode_fraction = decode_b1 * bytes_per_token / (bw_gbs * 1e9);

  nlohmann::json j;
  j["model"] = ef.model_path;
  j["model_name"] = c.name;
  j["threads"] = engine->n_threads();
  j["isa"] = kernels::IsaName(kernels::ActiveIsa());
  j["device"] = engine->backend_name();
  j["prompt_tokens"] = n_prompt;
  j["gen_tokens"] = n_gen;
  j["reps"] = reps;
  j["prefill_tok_s"] = Median(prefill);
  j["decode_tok_s"] = decode_b1;
  j["decode_tok_s_by_batch"] = decode;
  j["mem_read_bw_gb_s"] = bw_gbs;
  j["decode_bytes_per_token"] = bytes_per_token;
  j["decode_bw_fraction"] = decode_fraction;
  j["weights_mib"] = w.total_bytes / 1048576.0;
  j["kv_cache_mib"] = static_cast<double>(engine->cache().config().BlockBytes()) *
                      engine->cache().config().n_blocks / 1048576.0;
  j["peak_rss_mib"] = ru.ru_maxrss / 1024.0;
  if (vm["json"].as<bool>()) {
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << j.dump(2) << std::endl;
  }
  return 0;
}

}  // namespace
PDS_COMMAND(bench, "measure prefill and decode throughput and memory bandwidth", RunBench);
}  // namespace pdserve::cli
