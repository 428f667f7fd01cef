// pdserve loadgen: load-tests a pdserve router (grpc://) or any
// OpenAI-compatible server (http://) and reports TTFT, TPOT, ITL, end-to-end
// latency, throughput and goodput; the library lives in loadgen/.
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/signals.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "loadgen/compare.h"
#include "loadgen/machine.h"
#include "loadgen/plots.h"
#include "loadgen/report.h"
#include "loadgen/runner.h"
#include "loadgen/target.h"
#include "loadgen/workload.h"

namespace pdserve::cli {
namespace {

constexpr char kCommand[] = "loadgen";
constexpr absl::Duration kModelInfoTimeout = absl::Seconds(30);

absl::StatusOr<double> ParseRate(absl::string_view text, const std::string& flag) {
  double rate;
  if (text == "inf" || text == "infinity") return std::numeric_limits<double>::infinity();
  if (!absl::SimpleAtod(text, &rate) || !(rate > 0) || std::isnan(rate)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", std::string(text), "' is not a rate > 0 or inf"));
  }
  return rate;
}

// Every flag with its value, for the result file.
nlohmann::ordered_json ArgumentsJson(const po::variables_map& vm) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [name, value] : vm) {
    const boost::any& v = value.value();
    if (const auto* s = boost::any_cast<std::string>(&v)) {
      j[name] = *s;
    } else if (const auto* i = boost::any_cast<int>(&v)) {
      j[name] = *i;
    } else if (const auto* u = boost::any_cast<uint64_t>(&v)) {
      j[name] = *u;
    } else if (const auto* d = boost::any_cast<double>(&v)) {
      j[name] = *d;
    } else if (const auto* b = boost::any_cast<bool>(&v)) {
      j[name] = *b;
    } else if (const auto* l = boost::any_cast<std::vector<std::string>>(&v)) {
      j[name] = *l;
    }
  }
  return j;
}

// Sizes ShareGPT texts with a GGUF model's tokenizer.
absl::StatusOr<loadgen::TokenCounter> MakeTokenCounter(const std::string& path) {
  auto file = gguf::GgufFile::Open(path);
  if (!file.ok()) return file.status();
  auto tokenizer = Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) return tokenizer.status();
  std::shared_ptr<const Tokenizer> shared(std::move(*tokenizer));
  return loadgen::TokenCounter([shared](const std::string& text) -> int32_t {
    auto ids = shared->Encode(text);
    return ids.ok() ? static_cast<int32_t>(ids->size()) : static_cast<int32_t>(text.size() / 4);
  });
}

// Turns the first SIGINT/SIGTERM into `interrupted` (the run ends as at
// its time bound and the results are still written); a second one exits at
// once. Signals must be blocked before any thread starts.
class SignalWatcher {
 public:
  SignalWatcher() : thread_([this] { Loop(); }) {}
  ~SignalWatcher() {
    done_.store(true);
    thread_.join();
  }
  const std::atomic<bool>* interrupted() const { return &interrupted_; }

 private:
  void Loop() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    const timespec poll = {0, 100 * 1000 * 1000};
    while (!done_.load()) {
      const int sig = sigtimedwait(&set, nullptr, &poll);
      if (sig != SIGINT && sig != SIGTERM) continue;
      if (interrupted_.exchange(true)) _exit(130);
      std::fprintf(stderr,
                   "\npdserve loadgen: interrupted: cancelling, then writing the results "
                   "(again to quit now)\n");
    }
  }

  std::atomic<bool> interrupted_{false};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// --compare: several result files side by side; no load is sent.
int RunCompare(const po::variables_map& vm) {
  std::vector<loadgen::ComparedResult> results;
  for (const std::string& path : vm["compare"].as<std::vector<std::string>>()) {
    absl::StatusOr<loadgen::ComparedResult> r = loadgen::LoadResult(path);
    if (!r.ok()) return Fail(kCommand, std::string(r.status().message()));
    results.push_back(*std::move(r));
  }
  loadgen::PrintComparison(results, stdout);
  const std::string plot_dir = vm["plot-dir"].as<std::string>();
  if (!plot_dir.empty()) {
    absl::StatusOr<std::vector<std::string>> files =
        loadgen::WriteComparisonPlots(plot_dir, results);
    if (!files.ok()) return Fail(kCommand, std::string(files.status().message()));
  }
  return 0;
}

int RunLoadgen(int argc, char** argv) {
  BlockTerminationSignals();
  po::options_description desc("loadgen flags");
  AddCommonFlags(&desc);
  // clang-format off
  desc.add_options()
      ("target", po::value<std::string>(),
       "grpc://HOST:PORT (pdserve router or serve) or http://HOST:PORT (OpenAI-compatible, "
       "POST /v1/completions with SSE streaming); required")
      ("model", po::value<std::string>()->default_value(""),
       "http: the request's \"model\" field (default: the first id of GET /v1/models)")
      ("endpoint", po::value<std::string>()->default_value("/v1/completions"), "http: completions path")
      ("dataset-name", po::value<std::string>()->default_value("random"),
       "random, sharegpt (needs --dataset-path) or prefix (shared prefixes)")
      ("dataset-path", po::value<std::string>()->default_value(""),
       "ShareGPT-format JSON: conversations[0] is the prompt, conversations[1] sets the output length")
      ("tokenizer", po::value<std::string>()->default_value(""),
       "GGUF file whose tokenizer sizes ShareGPT texts (default: the bundled model when present, "
       "else 4 bytes per token)")
      ("sharegpt-output-len", po::value<int>()->default_value(0),
       "sharegpt: fixed output length (0: the reply's length)")
      ("num-prompts", po::value<int>()->default_value(100), "requests per run")
      ("random-input-len", po::value<int>()->default_value(256),
       "random: prompt tokens; prefix: tokens after the shared prefix")
      ("random-output-len", po::value<int>()->default_value(64), "max_tokens of each request")
      ("random-range-ratio", po::value<double>()->default_value(0.0),
       "lengths drawn uniformly from [L*(1-r), L*(1+r)], 0 <= r < 1")
      ("prefix-len", po::value<int>()->default_value(0), "prefix: tokens of each shared prefix")
      ("num-prefixes", po::value<int>()->default_value(1), "prefix: distinct prefixes (equal shares)")
      ("ignore-eos", po::bool_switch(), "generate max_tokens even past EOS")
      ("temperature", po::value<double>()->default_value(0.0), "sampling temperature (0: greedy)")
      ("seed", po::value<uint64_t>()->default_value(0), "seed of the prompts and the arrivals")
      ("request-rate", po::value<std::string>()->default_value("inf"),
       "requests per second (open loop), or inf to send all at once")
      ("burstiness", po::value<double>()->default_value(1.0),
       "gamma shape of the gaps: 1 = Poisson, < 1 burstier, > 1 more regular")
      ("max-concurrency", po::value<int>()->default_value(0),
       "at most N requests in flight (closed loop with --request-rate inf); 0: no bound")
      ("sweep", po::value<std::string>()->default_value(""),
       "comma-separated rates, one run each (e.g. 1,2,4,inf); replaces --request-rate")
      ("num-warmups", po::value<int>()->default_value(0),
       "requests sent (and awaited) before each run, with prompts of their own")
      ("same-prompts-per-rate", po::bool_switch(),
       "every rate of a --sweep replays the same prompts (default: fresh prompts per rate, so no "
       "rate sees prefix-cache hits left by an earlier one)")
      ("warmup-window", po::value<double>()->default_value(0.0),
       "seconds at the start of each run whose requests count in no figure")
      ("cooldown-window", po::value<double>()->default_value(0.0),
       "seconds at the end of each run: requests ending in them count in no figure")
      ("max-duration", po::value<double>()->default_value(600.0),
       "seconds a run may take: later prompts are not sent, requests in flight are cancelled")
      ("percentiles", po::value<std::string>()->default_value("50,90,99"), "latency percentiles")
      ("goodput", po::value<std::vector<std::string>>()->multitoken(),
       "SLOs for goodput, e.g. --goodput ttft:500 tpot:50 e2e:5000 (milliseconds)")
      ("result-json", po::value<std::string>()->default_value(""), "write results and metadata here")
      ("detailed-csv", po::value<std::string>()->default_value(""), "write one row per request here")
      ("plot-dir", po::value<std::string>()->default_value(""), "write SVG plots into this directory")
      ("no-progress", po::bool_switch(), "no live progress line (default: on when stderr is a terminal)")
      ("label", po::value<std::string>()->default_value(""),
       "a name for this result (metadata.label; --compare uses it)")
      ("compare", po::value<std::vector<std::string>>()->multitoken(),
       "instead of a run: put these --result-json files side by side (table, and plots with "
       "--plot-dir)");
  // clang-format on
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv,
                          "--target URL [flags] | --compare A.json B.json... [--plot-dir DIR]",
                          desc, &vm);
      rc >= 0)
    return rc;
  auto fail = [](const absl::Status& st) { return Fail(kCommand, std::string(st.message())); };
  if (vm.count("compare")) return RunCompare(vm);

  if (!vm.count("target"))
    return Fail(kCommand, "--target is required (grpc://HOST:PORT or http://HOST:PORT)");
  absl::StatusOr<loadgen::Target> target = loadgen::ParseTarget(vm["target"].as<std::string>());
  if (!target.ok()) return fail(target.status());
  absl::StatusOr<std::vector<double>> percentiles =
      loadgen::ParsePercentiles(vm["percentiles"].as<std::string>());
  if (!percentiles.ok()) return fail(percentiles.status());
  absl::StatusOr<loadgen::Slo> slo =
      loadgen::ParseSlo(vm.count("goodput") ? vm["goodput"].as<std::vector<std::string>>()
                                            : std::vector<std::string>{});
  if (!slo.ok()) return fail(slo.status());
  if (vm.count("goodput") && slo->empty())
    return Fail(kCommand, "--goodput: give at least one SLO");

  std::vector<double> rates;
  const std::string sweep = vm["sweep"].as<std::string>();
  if (!sweep.empty()) {
    if (!vm["request-rate"].defaulted())
      return Fail(kCommand, "give --sweep or --request-rate, not both");
    for (absl::string_view part : absl::StrSplit(sweep, ',', absl::SkipWhitespace())) {
      absl::StatusOr<double> rate = ParseRate(absl::StripAsciiWhitespace(part), "--sweep");
      if (!rate.ok()) return fail(rate.status());
      rates.push_back(*rate);
    }
    if (rates.empty()) return Fail(kCommand, "--sweep: give at least one rate");
  } else {
    absl::StatusOr<double> rate = ParseRate(vm["request-rate"].as<std::string>(), "--request-rate");
    if (!rate.ok()) return fail(rate.status());
    rates.push_back(*rate);
  }
  const double burstiness = vm["burstiness"].as<double>();
  if (!(burstiness > 0) || !std::isfinite(burstiness))
    return Fail(kCommand, "--burstiness must be > 0");
  const int max_concurrency = vm["max-concurrency"].as<int>();
  if (max_concurrency < 0) return Fail(kCommand, "--max-concurrency must be >= 0");
  const double max_duration = vm["max-duration"].as<double>();
  if (!(max_duration > 0) || !std::isfinite(max_duration)) {
    return Fail(kCommand, "--max-duration must be a number of seconds > 0");
  }
  const int num_warmups = vm["num-warmups"].as<int>();
  if (num_warmups < 0) return Fail(kCommand, "--num-warmups must be >= 0");
  const double warmup_window = vm["warmup-window"].as<double>();
  const double cooldown_window = vm["cooldown-window"].as<double>();
  if (!(warmup_window >= 0) || !std::isfinite(warmup_window) || !(cooldown_window >= 0) ||
      !std::isfinite(cooldown_window)) {
    return Fail(kCommand, "--warmup-window and --cooldown-window must be seconds >= 0");
  }
  const bool same_prompts = vm["same-prompts-per-rate"].as<bool>();
  const double temperature = vm["temperature"].as<double>();
  if (!(temperature >= 0) || !std::isfinite(temperature))
    return Fail(kCommand, "--temperature must be >= 0");

  loadgen::WorkloadOptions work;
  work.name = vm["dataset-name"].as<std::string>();
  work.dataset_path = vm["dataset-path"].as<std::string>();
  // A dataset file or a prefix length says which workload is meant.
  if (vm["dataset-name"].defaulted() && !work.dataset_path.empty()) work.name = "sharegpt";
  if (vm["dataset-name"].defaulted() && !vm["prefix-len"].defaulted()) work.name = "prefix";
  work.num_prompts = vm["num-prompts"].as<int>();
  work.random_input_len = vm["random-input-len"].as<int>();
  work.random_output_len = vm["random-output-len"].as<int>();
  work.random_range_ratio = vm["random-range-ratio"].as<double>();
  work.prefix_len = vm["prefix-len"].as<int>();
  work.num_prefixes = vm["num-prefixes"].as<int>();
  work.sharegpt_output_len = vm["sharegpt-output-len"].as<int>();
  work.ignore_eos = vm["ignore-eos"].as<bool>();
  work.temperature = static_cast<float>(temperature);
  work.seed = vm["seed"].as<uint64_t>();
  {
    // Catch flag mistakes before touching the network (vocab_size comes later).
    loadgen::WorkloadOptions check = work;
    check.token_ids = false;
    if (absl::Status st = loadgen::ValidateWorkloadOptions(check); !st.ok()) return fail(st);
    if (work.name == "sharegpt" && !std::filesystem::is_regular_file(work.dataset_path)) {
      return Fail(kCommand, absl::StrCat("--dataset-path: no such file: ", work.dataset_path));
    }
  }

  loadgen::ClientOptions client_options;
  client_options.model = vm["model"].as<std::string>();
  client_options.endpoint = vm["endpoint"].as<std::string>();
  absl::StatusOr<std::unique_ptr<loadgen::LoadClient>> client =
      loadgen::MakeClient(*target, client_options);
  if (!client.ok()) return fail(client.status());
  absl::StatusOr<loadgen::ModelDescription> model = (*client)->GetModelInfo(kModelInfoTimeout);
  if (!model.ok())
    return Fail(kCommand, absl::StrCat("target not reachable: ", model.status().message()));

  work.token_ids = (*client)->accepts_token_ids();
  work.vocab_size = model->vocab_size;
  work.avoid_token_ids = model->eos_token_ids;
  if (model->bos_token_id >= 0) work.avoid_token_ids.push_back(model->bos_token_id);
  loadgen::TokenCounter counter;
  std::string token_count_source = "none";
  if (work.name == "sharegpt") {
    std::string tokenizer_path = vm["tokenizer"].as<std::string>();
    if (tokenizer_path.empty() && std::filesystem::exists(DefaultModelPath())) {
      tokenizer_path = DefaultModelPath();
    }
    if (!tokenizer_path.empty()) {
      absl::StatusOr<loadgen::TokenCounter> c = MakeTokenCounter(tokenizer_path);
      if (!c.ok()) return Fail(kCommand, absl::StrCat("--tokenizer: ", c.status().message()));
      counter = *std::move(c);
      token_count_source = tokenizer_path;
    } else {
      token_count_source = "estimate: 4 bytes per token";
    }
  }
  // One pool of distinct prompts, sliced: the warm-ups first (never a measured
  // prompt), then each rate's own prompts (or one set for every rate).
  const int prompt_sets = same_prompts ? 1 : static_cast<int>(rates.size());
  loadgen::WorkloadOptions pool_options = work;
  pool_options.num_prompts = num_warmups + work.num_prompts * prompt_sets;
  absl::StatusOr<std::vector<loadgen::RequestInput>> pool =
      loadgen::BuildWorkload(pool_options, counter);
  if (!pool.ok()) return fail(pool.status());
  std::vector<loadgen::RequestInput> warmup_prompts;
  std::vector<std::vector<loadgen::RequestInput>> rate_prompts;
  bool warmups_distinct = true;
  if (static_cast<int>(pool->size()) < pool_options.num_prompts) {
    // A dataset too small to give every rate and the warm-ups prompts of
    // their own: every rate gets the same prompts, and the warm-ups reuse them
    // only when nothing else is left; said on stderr and in the result JSON.
    std::fprintf(stderr,
                 "pdserve loadgen: only %zu prompts passed the dataset's filters (wanted %d for "
                 "%d warm-ups and %d prompts x %d rate(s)): every rate replays the same prompts\n",
                 pool->size(), pool_options.num_prompts, num_warmups, work.num_prompts,
                 prompt_sets);
    const int n = static_cast<int>(pool->size());
    const int warm = std::min(num_warmups, std::max(0, n - work.num_prompts));
    warmup_prompts.assign(pool->begin(), pool->begin() + warm);
    rate_prompts.emplace_back(pool->begin() + warm, pool->end());
    for (int i = 0; i < num_warmups - warm && n > 0; ++i) {
      warmup_prompts.push_back((*pool)[i % n]);
      warmups_distinct = false;
    }
  } else {
    warmup_prompts.assign(pool->begin(), pool->begin() + num_warmups);
    for (int i = 0; i < prompt_sets; ++i) {
      auto first = pool->begin() + num_warmups + static_cast<int64_t>(i) * work.num_prompts;
      rate_prompts.emplace_back(first, first + work.num_prompts);
    }
  }
  const std::vector<loadgen::RequestInput>* prompts = &rate_prompts[0];

  const bool progress = !vm["no-progress"].as<bool>() && isatty(STDERR_FILENO);
  SignalWatcher signals;
  std::fprintf(stderr, "pdserve loadgen: %s, model %s, %zu %s prompts per run, %zu run(s)\n",
               target->url.c_str(), model->name.c_str(), prompts->size(), work.name.c_str(),
               rates.size());
  std::vector<loadgen::RunReport> runs;
  for (size_t i = 0; i < rates.size(); ++i) {
    loadgen::RunOptions run;
    run.config.request_rate = rates[i];
    run.config.burstiness = burstiness;
    run.config.max_concurrency = max_concurrency;
    run.max_duration_s = max_duration;
    run.seed = work.seed;
    run.config.warmup_window_s = warmup_window;
    run.config.cooldown_window_s = cooldown_window;
    run.warmup_prompts = warmup_prompts;
    prompts = &rate_prompts[std::min(i, rate_prompts.size() - 1)];
    run.id_prefix = rates.size() > 1 ? absl::StrCat("r", i, "-") : "";
    run.progress = progress;
    run.label = absl::StrCat("[rate ", loadgen::RateText(rates[i]), "]");
    run.interrupted = signals.interrupted();
    absl::StatusOr<loadgen::RunResult> result = loadgen::RunLoad(client->get(), *prompts, run);
    if (!result.ok()) return fail(result.status());
    loadgen::RunReport report;
    report.summary =
        loadgen::Summarize(run.config, result->records, result->duration_s, *percentiles, *slo);
    report.records = std::move(result->records);
    loadgen::PrintRunTable(report.summary, *percentiles, *slo, stdout);
    runs.push_back(std::move(report));
    if (signals.interrupted()->load()) break;  // no further rates
  }
  if (runs.size() > 1) loadgen::PrintSweepTable(runs, stdout);

  const std::string json_path = vm["result-json"].as<std::string>();
  if (!json_path.empty()) {
    const loadgen::MachineInfo machine = loadgen::DescribeMachine();
    nlohmann::ordered_json meta;
    meta["tool"] = "pdserve loadgen";
    meta["target"] = target->url;
    meta["backend"] = (*client)->kind();
    meta["label"] = vm["label"].as<std::string>();
    meta["model"] = model->name;
    meta["interrupted"] = signals.interrupted()->load();
    meta["model_info"] = {{"vocab_size", model->vocab_size},
                          {"context_length", model->context_length}};
    meta["workload"] = {{"name", work.name},
                        {"prompt_format", work.name == "sharegpt" ? "text"
                                          : work.token_ids        ? "random token ids"
                                                                  : "random common words"},
                        {"token_counts", token_count_source},
                        {"warmup_prompts", warmups_distinct ? "distinct from every measured prompt"
                                                            : "some replay measured prompts"},
                        {"prompts_per_rate", rate_prompts.size() > 1 ? "fresh" : "same"}};
    std::vector<std::string> args(argv, argv + argc);
    meta["command_line"] = absl::StrCat("pdserve ", absl::StrJoin(args, " "));
    meta["arguments"] = ArgumentsJson(vm);
    meta["machine"] = {{"hostname", machine.hostname},
                       {"cpu_model", machine.cpu_model},
                       {"cores", machine.cores},
                       {"date", machine.date}};
    const std::string text = loadgen::ResultJson(meta, *percentiles, *slo, runs)
                                 .dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
    if (absl::Status st = loadgen::WriteFile(json_path, text + "\n"); !st.ok()) return fail(st);
  }
  const std::string csv_path = vm["detailed-csv"].as<std::string>();
  if (!csv_path.empty()) {
    if (absl::Status st = loadgen::WriteFile(csv_path, loadgen::DetailedCsv(runs)); !st.ok()) {
      return fail(st);
    }
  }
  const std::string plot_dir = vm["plot-dir"].as<std::string>();
  if (!plot_dir.empty()) {
    absl::StatusOr<std::vector<std::string>> files =
        loadgen::WritePlots(plot_dir, runs, absl::StrCat(model->name, " @ ", target->url));
    if (!files.ok()) return fail(files.status());
  }
  int ok = 0;
  for (const auto& r : runs) ok += r.summary.completed;
  if (ok == 0) return Fail(kCommand, "no request succeeded");
  return 0;
}

}  // namespace
PDS_COMMAND(loadgen,
            "load-test a pdserve router (grpc://) or an OpenAI-compatible server (http://)",
            RunLoadgen);
}  // namespace pdserve::cli
