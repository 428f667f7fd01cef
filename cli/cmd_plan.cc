// pdserve plan: the capacity planner. Simulates candidate deployments (xPyD,
// colocated xN) under a workload made by loadgen's generators, with cost
// models from a device profile (`pdserve bench --profile`), and recommends
// the deployment for a target rate and SLO. The library lives in planner/.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "loadgen/stats.h"
#include "planner/plan.h"

namespace pdserve::cli {
namespace {

constexpr char kCommand[] = "plan";

absl::StatusOr<std::vector<double>> ParseRates(const std::string& text) {
  std::vector<double> rates;
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    double r;
    if (!absl::SimpleAtod(part, &r) || !(r > 0) || !std::isfinite(r)) {
      return absl::InvalidArgumentError(
          absl::StrCat("rate '", std::string(part),
                       "' is not a number of requests/s > 0 (inf cannot be simulated)"));
    }
    rates.push_back(r);
  }
  return rates;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out << text;
  if (!out) return absl::DataLossError(absl::StrCat("write failed: ", path));
  return absl::OkStatus();
}

// Deployment-level knobs that override the profile's (they are flags of
// `pdserve cluster`'s nodes, not properties of the device).
absl::Status ApplyOverrides(const po::variables_map& vm, planner::DeviceProfile* p) {
  if (vm.count("kv-blocks")) p->kv_blocks = vm["kv-blocks"].as<int64_t>();
  if (vm.count("max-batch-tokens")) p->max_batch_tokens = vm["max-batch-tokens"].as<int>();
  if (vm.count("max-batch-seqs")) p->max_batch_seqs = vm["max-batch-seqs"].as<int>();
  if (vm.count("link-gbps")) p->link.bandwidth_bytes_per_s = vm["link-gbps"].as<double>() * 1e9 / 8;
  if (vm.count("link-latency-ms")) p->link.latency_s = vm["link-latency-ms"].as<double>() / 1e3;
  return p->Validate();
}

int RunPlan(int argc, char** argv) {
  po::options_description desc("plan flags");
  AddCommonFlags(&desc);
  // clang-format off
  desc.add_options()
      ("profile", po::value<std::string>(),
       "device profile JSON (pdserve bench --profile, or a file of published figures); required")
      ("colocated-profile", po::value<std::string>()->default_value(""),
       "profile of a colocated node when it differs (e.g. twice the CPU threads); default --profile")
      ("decode-profile", po::value<std::string>()->default_value(""),
       "profile of a decode node when it differs from a prefill node's (another device); default "
       "--profile")
      ("deployments", po::value<std::string>()->default_value(""),
       "candidates, comma-separated: xPyD or colocatedN (default: every split of up to --max-nodes)")
      ("max-nodes", po::value<int>()->default_value(4), "largest deployment to enumerate")
      ("dataset-name", po::value<std::string>()->default_value("random"), "as loadgen: random, sharegpt or prefix")
      ("dataset-path", po::value<std::string>()->default_value(""), "as loadgen (sharegpt; 4 bytes count as a token)")
      ("sharegpt-output-len", po::value<int>()->default_value(0), "as loadgen")
      ("num-prompts", po::value<int>()->default_value(1000), "requests per simulated rate")
      ("random-input-len", po::value<int>()->default_value(256), "as loadgen")
      ("random-output-len", po::value<int>()->default_value(64), "as loadgen (outputs are generated in full)")
      ("random-range-ratio", po::value<double>()->default_value(0.0), "as loadgen")
      ("prefix-len", po::value<int>()->default_value(0), "as loadgen (prefix caching is not simulated)")
      ("num-prefixes", po::value<int>()->default_value(1), "as loadgen")
      ("vocab-size", po::value<int>()->default_value(49152),
       "vocabulary of the token-id prompts loadgen would draw (only the draw order depends on it)")
      ("seed", po::value<uint64_t>()->default_value(0), "seed of the prompts and arrivals, as loadgen's")
      ("avoid-token-ids", po::value<std::string>()->default_value(""),
       "the target's EOS/BOS ids, comma-separated: loadgen redraws them in token-id prompts, which "
       "moves its later length draws (the committed SmolLM2 sweeps: 0,1); without them the lengths "
       "match only until one is drawn")
      ("request-rate", po::value<std::string>()->default_value(""), "one rate (requests/s)")
      ("sweep", po::value<std::string>()->default_value(""), "comma-separated rates")
      ("burstiness", po::value<double>()->default_value(1.0), "gamma shape of the gaps: 1 = Poisson")
      ("cached-prompts", po::value<int>()->default_value(0),
       "the first N prompts are prefix-cache hits (sent before the run, e.g. by warm-ups that replayed them)")
      ("goodput", po::value<std::vector<std::string>>()->multitoken(),
       "SLOs, e.g. --goodput ttft:250 tpot:100 (milliseconds), as loadgen")
      ("target-rate", po::value<double>()->default_value(0), "the rate to size for (req/s)")
      ("target-attainment", po::value<double>()->default_value(0.9),
       "share of requests that must meet the SLO (DistServe uses 0.9)")
      ("percentiles", po::value<std::string>()->default_value("50,90,99"), "latency percentiles")
      ("kv-blocks", po::value<int64_t>(), "override: KV blocks per node")
      ("max-batch-tokens", po::value<int>(), "override: token budget per step")
      ("max-batch-seqs", po::value<int>(), "override: sequences per step")
      ("link-gbps", po::value<double>(), "override: prefill->decode link, Gbit/s")
      ("link-latency-ms", po::value<double>(), "override: link latency, ms")
      ("result-json", po::value<std::string>()->default_value(""), "write the plan here")
      ("svg", po::value<std::string>()->default_value(""), "write goodput against rate here")
      ("replay-csv", po::value<std::string>()->default_value(""),
       "simulate the runs of this loadgen --detailed-csv file as they were sent (their rates, start "
       "offsets and lengths) instead of generating a workload; no --sweep/--request-rate")
      ("detailed-csv", po::value<std::string>()->default_value(""),
       "write one row per simulated request here (compare with loadgen's --detailed-csv)")
      ("json", po::bool_switch(), "print the JSON instead of the table");
  // clang-format on
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv,
                          "--profile FILE --sweep R1,R2.. [--goodput ttft:MS tpot:MS] [flags]",
                          desc, &vm);
      rc >= 0) {
    return rc;
  }
  auto fail = [](const absl::Status& st) { return Fail(kCommand, std::string(st.message())); };
  if (!vm.count("profile")) return Fail(kCommand, "--profile FILE is required");

  planner::PlanOptions o;
  absl::StatusOr<planner::DeviceProfile> profile =
      planner::LoadProfile(vm["profile"].as<std::string>());
  if (!profile.ok()) return fail(profile.status());
  o.profile = *profile;
  if (const std::string path = vm["colocated-profile"].as<std::string>(); !path.empty()) {
    profile = planner::LoadProfile(path);
    if (!profile.ok()) return fail(profile.status());
  }
  o.colocated_profile = *profile;
  if (const std::string path = vm["decode-profile"].as<std::string>(); !path.empty()) {
    profile = planner::LoadProfile(path);
    if (!profile.ok()) return fail(profile.status());
    o.decode_profile = *profile;
  }
  for (planner::DeviceProfile* p : {&o.profile, &o.colocated_profile}) {
    if (absl::Status s = ApplyOverrides(vm, p); !s.ok()) return fail(s);
  }
  if (o.decode_profile) {
    if (absl::Status s = ApplyOverrides(vm, &*o.decode_profile); !s.ok()) return fail(s);
  }

  if (const std::string list = vm["deployments"].as<std::string>(); !list.empty()) {
    for (absl::string_view part : absl::StrSplit(list, absl::ByAnyChar(", "), absl::SkipEmpty())) {
      absl::StatusOr<planner::Deployment> d = planner::ParseDeployment(std::string(part));
      if (!d.ok()) return fail(d.status());
      o.deployments.push_back(*d);
    }
  } else {
    const int max_nodes = vm["max-nodes"].as<int>();
    if (max_nodes < 1 || max_nodes > 64) return Fail(kCommand, "--max-nodes must be in [1, 64]");
    o.deployments = planner::EnumerateDeployments(max_nodes);
  }

  o.workload.name = vm["dataset-name"].as<std::string>();
  o.workload.dataset_path = vm["dataset-path"].as<std::string>();
  if (vm["dataset-name"].defaulted() && !o.workload.dataset_path.empty())
    o.workload.name = "sharegpt";
  if (vm["dataset-name"].defaulted() && !vm["prefix-len"].defaulted()) o.workload.name = "prefix";
  o.workload.num_prompts = vm["num-prompts"].as<int>();
  if (o.workload.num_prompts > 1000000) return Fail(kCommand, "--num-prompts must be <= 1000000");
  o.workload.random_input_len = vm["random-input-len"].as<int>();
  o.workload.random_output_len = vm["random-output-len"].as<int>();
  o.workload.random_range_ratio = vm["random-range-ratio"].as<double>();
  o.workload.prefix_len = vm["prefix-len"].as<int>();
  o.workload.num_prefixes = vm["num-prefixes"].as<int>();
  o.workload.sharegpt_output_len = vm["sharegpt-output-len"].as<int>();
  o.workload.seed = vm["seed"].as<uint64_t>();
  o.workload.ignore_eos = true;
  // loadgen sends token ids to a pdserve router: draw them the same way so
  // the lengths follow the same random stream.
  o.workload.token_ids = true;
  o.workload.vocab_size = vm["vocab-size"].as<int>();
  for (absl::string_view part :
       absl::StrSplit(vm["avoid-token-ids"].as<std::string>(), ',', absl::SkipWhitespace())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id) || id < 0 || id >= o.workload.vocab_size)
      return Fail(kCommand, "--avoid-token-ids: token ids in [0, --vocab-size), comma-separated");
    o.workload.avoid_token_ids.push_back(id);
  }
  if (absl::Status s = loadgen::ValidateWorkloadOptions(o.workload); !s.ok()) return fail(s);
  const int64_t longest = static_cast<int64_t>(o.workload.prefix_len) + o.workload.random_input_len;
  if (longest > 1000000 || o.workload.random_output_len > 1000000) {
    return Fail(kCommand, "prompt and output lengths must be <= 1000000 tokens");
  }

  const std::string rate = vm["request-rate"].as<std::string>(),
                    sweep = vm["sweep"].as<std::string>();
  if (!rate.empty() && !sweep.empty())
    return Fail(kCommand, "give --sweep or --request-rate, not both");
  if (const std::string replay = vm["replay-csv"].as<std::string>(); !replay.empty()) {
    if (!rate.empty() || !sweep.empty())
      return Fail(kCommand, "--replay-csv brings its own rates: no --sweep or --request-rate");
    absl::StatusOr<std::vector<planner::ReplayRun>> runs = planner::LoadLoadgenCsv(replay);
    if (!runs.ok()) return fail(runs.status());
    o.replay = std::move(*runs);
    o.replay_source = replay;
  } else {
    absl::StatusOr<std::vector<double>> rates = ParseRates(rate.empty() ? sweep : rate);
    if (!rates.ok()) return fail(rates.status());
    o.rates = *rates;
  }
  o.burstiness = vm["burstiness"].as<double>();
  o.cached_prompts = vm["cached-prompts"].as<int>();
  if (o.cached_prompts < 0) return Fail(kCommand, "--cached-prompts must be >= 0");
  if (!(o.burstiness > 0) || !std::isfinite(o.burstiness))
    return Fail(kCommand, "--burstiness must be > 0");
  o.target_rate = vm["target-rate"].as<double>();
  if (!(o.target_rate >= 0) || !std::isfinite(o.target_rate))
    return Fail(kCommand, "--target-rate must be >= 0");
  o.target_attainment = vm["target-attainment"].as<double>();
  absl::StatusOr<loadgen::Slo> slo =
      loadgen::ParseSlo(vm.count("goodput") ? vm["goodput"].as<std::vector<std::string>>()
                                            : std::vector<std::string>{});
  if (!slo.ok()) return fail(slo.status());
  if (slo->empty())
    return Fail(kCommand, "--goodput: give the SLOs to plan for, e.g. ttft:250 tpot:100");
  o.slo = *slo;
  absl::StatusOr<std::vector<double>> percentiles =
      loadgen::ParsePercentiles(vm["percentiles"].as<std::string>());
  if (!percentiles.ok()) return fail(percentiles.status());
  o.percentiles = *percentiles;

  const std::string detailed_csv = vm["detailed-csv"].as<std::string>();
  o.keep_requests = !detailed_csv.empty();

  absl::StatusOr<planner::PlanReport> report = planner::RunPlan(o);
  if (!report.ok()) return fail(report.status());
  const nlohmann::ordered_json j = planner::PlanToJson(o, *report);
  if (vm["json"].as<bool>()) {
    std::cout << j.dump(2) << std::endl;
  } else {
    std::cout << planner::PlanTable(o, *report);
  }
  if (const std::string path = vm["result-json"].as<std::string>(); !path.empty()) {
    if (absl::Status s = WriteFile(path, j.dump(2) + "\n"); !s.ok()) return fail(s);
  }
  if (!detailed_csv.empty()) {
    if (absl::Status s = WriteFile(detailed_csv, planner::PlanRequestsCsv(*report)); !s.ok())
      return fail(s);
  }
  if (const std::string path = vm["svg"].as<std::string>(); !path.empty()) {
    if (absl::Status s = WriteFile(path, planner::PlanSvg(o, *report)); !s.ok()) return fail(s);
  }
  return 0;
}

}  // namespace
PDS_COMMAND(plan, "capacity planner: simulate xPyD and colocated deployments, recommend one",
            RunPlan);
}  // namespace pdserve::cli
