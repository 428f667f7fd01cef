// `pdserve plan`: every candidate deployment simulated at every rate, and the
// deployment to run for a target rate and SLO.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadgen/stats.h"
#include "loadgen/workload.h"
#include "nlohmann/json.hpp"
#include "planner/cost_model.h"
#include "planner/deployment.h"
#include "planner/summary.h"
#include "planner/workload.h"

namespace pdserve::planner {

struct PlanOptions {
  DeviceProfile profile;            // prefill and decode nodes
  DeviceProfile colocated_profile;  // colocated nodes
  // Decode nodes, where they differ from prefill nodes (another device, or
  // a node measured apart); empty: `profile`.
  std::optional<DeviceProfile> decode_profile;
  std::vector<Deployment> deployments;
  loadgen::WorkloadOptions workload;
  std::vector<double> rates;  // requests/s
  double burstiness = 1.0;    // gamma shape; 1 is Poisson
  // The first `cached_prompts` prompts were sent once before the run (a
  // warm-up that replayed them), so their full KV blocks are prefix-cache
  // hits: CachedPrefixTokens of each.
  int32_t cached_prompts = 0;
  loadgen::Slo slo;
  double target_rate = 0;          // 0: none (rank by capacity per node)
  double target_attainment = 0.9;  // share of requests that must meet the SLO
  std::vector<double> percentiles = {50, 90, 99};
  // Non-empty: simulate these measured runs (their own rates, arrivals and
  // lengths) instead of a generated workload per rate; rates and target_rate
  // must then be unset. replay_source names them in the JSON.
  std::vector<ReplayRun> replay;
  std::string replay_source;
  bool keep_requests = false;  // keep each simulated request (PlanPoint::requests)
};

struct PlanPoint {
  double rate = 0;
  SimSummary summary;
  // With PlanOptions::keep_requests: what was simulated and what came out,
  // in arrival order.
  std::vector<SimRequest> inputs;
  std::vector<RequestResult> requests;
};

// A deployment meets a rate when at least `target_attainment` of the
// requests meet the SLO and its steady goodput (SimSummary) keeps up with
// that share of the rate: a finite run at a rate past capacity can keep
// every request within its SLO while a backlog grows, which only the goodput
// shows. The steady goodput, not the whole run's: the drain after the last
// arrival would otherwise fail a deployment that keeps up whenever requests
// take long against the run (256-token answers in a 10 s run).
bool MeetsTarget(const PlanPoint& point, double target_attainment);

// Prompt tokens a prefix cache of `block_size`-token blocks serves for a
// prompt it has seen whole: its full blocks, less the block holding the last
// token (the engine always computes that one to sample token #1).
int32_t CachedPrefixTokens(int32_t input_tokens, int32_t block_size);

struct DeploymentResult {
  Deployment deployment;
  std::vector<PlanPoint> points;  // by rate, ascending
  // The highest simulated rate that meets the target (MeetsTarget; 0: none).
  double max_rate_meeting = 0;
};

struct Recommendation {
  bool found = false;  // a deployment meets the target
  Deployment deployment;
  std::string reason;
};

struct PlanReport {
  std::vector<DeploymentResult> results;
  Recommendation recommendation;
};

absl::StatusOr<PlanReport> RunPlan(const PlanOptions& options);

nlohmann::ordered_json PlanToJson(const PlanOptions& options, const PlanReport& report);
// One row per deployment and rate.
std::string PlanTable(const PlanOptions& options, const PlanReport& report);
// One row per simulated request (needs keep_requests), loadgen's
// --detailed-csv columns where they mean the same: deployment, request_rate,
// index, arrival_s, input_tokens, cached_tokens, output_tokens, completed,
// dispatch_ms (router queue), ttft_ms, tpot_ms, e2e_ms.
std::string PlanRequestsCsv(const PlanReport& report);
// Goodput against rate, one line per deployment.
std::string PlanSvg(const PlanOptions& options, const PlanReport& report);

}  // namespace pdserve::planner
