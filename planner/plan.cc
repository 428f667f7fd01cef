#include "planner/plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loadgen/svg.h"
#include "planner/workload.h"

namespace pdserve::planner {
namespace {

double At(const loadgen::Distribution& d, double p) { return d.At(p); }

}  // namespace

bool MeetsTarget(const PlanPoint& p, double target_attainment) {
  return p.summary.slo_attainment >= target_attainment &&
         p.summary.steady_goodput >= target_attainment * p.rate;
}

namespace {

const PlanPoint* PointAt(const DeploymentResult& r, double rate) {
  for (const PlanPoint& p : r.points) {
    if (p.rate == rate) return &p;
  }
  return nullptr;
}

Recommendation Recommend(const PlanOptions& o, const std::vector<DeploymentResult>& results) {
  Recommendation rec;
  const DeploymentResult* best = nullptr;
  if (o.target_rate > 0) {
    // The fewest nodes that meet the target at the target rate; then the
    // highest goodput.
    const DeploymentResult* closest = nullptr;
    for (const DeploymentResult& r : results) {
      const PlanPoint* p = PointAt(r, o.target_rate);
      if (p == nullptr) continue;
      const SimSummary& s = p->summary;
      if (MeetsTarget(*p, o.target_attainment)) {
        const SimSummary* b = best ? &PointAt(*best, o.target_rate)->summary : nullptr;
        if (!best || r.deployment.n_nodes() < best->deployment.n_nodes() ||
            (r.deployment.n_nodes() == best->deployment.n_nodes() && s.goodput > b->goodput)) {
          best = &r;
        }
      }
      if (!closest || s.slo_attainment > PointAt(*closest, o.target_rate)->summary.slo_attainment) {
        closest = &r;
      }
    }
    if (best) {
      const SimSummary& s = PointAt(*best, o.target_rate)->summary;
      rec.found = true;
      rec.deployment = best->deployment;
      rec.reason = absl::StrFormat(
          "%s: the fewest nodes (%d) whose simulated SLO attainment at %.4g req/s is >= %.0f%% "
          "with goodput keeping up (%.1f%%, steady goodput %.3g req/s)",
          best->deployment.Name(), best->deployment.n_nodes(), o.target_rate,
          100 * o.target_attainment, 100 * s.slo_attainment, s.steady_goodput);
    } else if (closest) {
      rec.deployment = closest->deployment;
      rec.reason = absl::StrFormat(
          "no candidate reaches %.0f%% SLO attainment at %.4g req/s; the closest is %s (%.1f%%): "
          "add nodes (--max-nodes) or relax the SLO",
          100 * o.target_attainment, o.target_rate, closest->deployment.Name(),
          100 * PointAt(*closest, o.target_rate)->summary.slo_attainment);
    }
    return rec;
  }
  // No target rate: the most capacity per node (DistServe's per-GPU goodput).
  for (const DeploymentResult& r : results) {
    const double per_node = r.max_rate_meeting / r.deployment.n_nodes();
    if (r.max_rate_meeting > 0 &&
        (!best || per_node > best->max_rate_meeting / best->deployment.n_nodes())) {
      best = &r;
    }
  }
  if (best) {
    rec.found = true;
    rec.deployment = best->deployment;
    rec.reason = absl::StrFormat(
        "%s: the highest rate per node meeting %.0f%% SLO attainment (%.4g req/s on %d nodes, %.4g "
        "per node)",
        best->deployment.Name(), 100 * o.target_attainment, best->max_rate_meeting,
        best->deployment.n_nodes(), best->max_rate_meeting / best->deployment.n_nodes());
  } else {
    rec.reason = absl::StrFormat("no candidate reaches %.0f%% SLO attainment at any simulated rate",
                                 100 * o.target_attainment);
  }
  return rec;
}

nlohmann::ordered_json Num(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json();
}

}  // namespace

int32_t CachedPrefixTokens(int32_t input_tokens, int32_t block_size) {
  if (input_tokens < 1 || block_size < 1) return 0;
  return (input_tokens - 1) / block_size * block_size;
}

std::string PlanRequestsCsv(const PlanReport& report) {
  std::string out =
      "deployment,request_rate,index,arrival_s,input_tokens,cached_tokens,output_tokens,completed,"
      "dispatch_ms,ttft_ms,tpot_ms,e2e_ms\n";
  auto ms = [](double s) { return std::isfinite(s) ? absl::StrFormat("%.3f", s * 1e3) : ""; };
  for (const DeploymentResult& dr : report.results) {
    const std::string name = dr.deployment.Name();
    for (const PlanPoint& p : dr.points) {
      for (size_t i = 0; i < p.requests.size() && i < p.inputs.size(); ++i) {
        const SimRequest& in = p.inputs[i];
        const RequestResult& r = p.requests[i];
        absl::StrAppend(
            &out, name, ",", absl::StrFormat("%g", p.rate), ",", i, ",",
            absl::StrFormat("%.6f", in.arrival_s), ",", in.input_tokens, ",", in.cached_tokens, ",",
            in.output_tokens, ",", r.completed ? "true" : "false", ",",
            r.completed ? ms(r.dispatch_s - r.arrival_s) : "", ",", r.completed ? ms(r.ttft_s) : "",
            ",", r.completed ? ms(r.tpot_s) : "", ",", r.completed ? ms(r.e2e_s) : "", "\n");
      }
    }
  }
  return out;
}

absl::StatusOr<PlanReport> RunPlan(const PlanOptions& o) {
  if (o.deployments.empty()) return absl::InvalidArgumentError("no candidate deployments");
  if (!o.replay.empty() && (!o.rates.empty() || o.target_rate > 0)) {
    return absl::InvalidArgumentError("a replay brings its own runs: no rates or target rate");
  }
  if (o.replay.empty() && o.rates.empty() && !(o.target_rate > 0)) {
    return absl::InvalidArgumentError("give rates to simulate, a target rate, or both");
  }
  if (o.cached_prompts < 0) return absl::InvalidArgumentError("cached prompts must be >= 0");
  if (!(o.target_attainment > 0 && o.target_attainment <= 1)) {
    return absl::InvalidArgumentError("target attainment must be in (0, 1]");
  }
  std::vector<double> rates = o.rates;
  if (o.target_rate > 0) rates.push_back(o.target_rate);
  for (const ReplayRun& run : o.replay) rates.push_back(run.rate);
  for (double r : rates) {
    if (!(r > 0) || !std::isfinite(r)) {
      return absl::InvalidArgumentError(absl::StrCat("rates must be finite and > 0, got ", r));
    }
  }
  if (o.replay.empty()) {
    std::sort(rates.begin(), rates.end());
    rates.erase(std::unique(rates.begin(), rates.end()), rates.end());
  }

  PlanReport report;
  for (const Deployment& d : o.deployments) report.results.push_back(DeploymentResult{d, {}, 0});
  for (size_t k = 0; k < rates.size(); ++k) {
    const double rate = rates[k];
    // One workload per rate, shared by every deployment: generated, or the
    // replayed run's requests as they were sent.
    absl::StatusOr<std::vector<SimRequest>> requests =
        o.replay.empty() ? BuildSimRequests(o.workload, rate, o.burstiness)
                         : absl::StatusOr<std::vector<SimRequest>>(o.replay[k].requests);
    if (!requests.ok()) return requests.status();
    for (DeploymentResult& dr : report.results) {
      // Prefix-cache hits, in blocks of the node that computes the prompt.
      const int32_t block_size =
          dr.deployment.disaggregated() ? o.profile.block_size : o.colocated_profile.block_size;
      const int32_t n_cached = std::min<int32_t>(o.cached_prompts, requests->size());
      for (int32_t i = 0; i < n_cached; ++i) {
        SimRequest& r = (*requests)[i];
        r.cached_tokens = CachedPrefixTokens(r.input_tokens, block_size);
      }
      SimOptions so;
      so.deployment = dr.deployment;
      so.prefill = o.profile;
      so.decode = o.decode_profile.value_or(o.profile);
      so.mixed = o.colocated_profile;
      absl::StatusOr<SimResult> sim = Simulate(*requests, so);
      if (!sim.ok()) {
        return absl::Status(sim.status().code(),
                            absl::StrCat(dr.deployment.Name(), ": ", sim.status().message()));
      }
      PlanPoint p;
      p.rate = rate;
      p.summary = Summarize(*requests, *sim, o.slo, o.percentiles);
      if (o.keep_requests) {
        p.inputs = *requests;
        p.requests = std::move(sim->requests);
      }
      if (MeetsTarget(p, o.target_attainment)) dr.max_rate_meeting = rate;
      dr.points.push_back(std::move(p));
    }
  }
  report.recommendation = Recommend(o, report.results);
  return report;
}

nlohmann::ordered_json PlanToJson(const PlanOptions& o, const PlanReport& report) {
  nlohmann::ordered_json j;
  j["tool"] = "pdserve plan";
  j["profile"] = ProfileToJson(o.profile);
  j["colocated_profile"] = ProfileToJson(o.colocated_profile);
  if (o.decode_profile) j["decode_profile"] = ProfileToJson(*o.decode_profile);
  nlohmann::ordered_json w;
  w["dataset-name"] = o.workload.name;
  w["num-prompts"] = o.workload.num_prompts;
  w["random-input-len"] = o.workload.random_input_len;
  w["random-output-len"] = o.workload.random_output_len;
  w["random-range-ratio"] = o.workload.random_range_ratio;
  if (o.workload.name == "prefix") {
    w["prefix-len"] = o.workload.prefix_len;
    w["num-prefixes"] = o.workload.num_prefixes;
  }
  if (o.workload.name == "sharegpt") w["dataset-path"] = o.workload.dataset_path;
  w["seed"] = o.workload.seed;
  w["burstiness"] = o.burstiness;
  w["cached_prompts"] = o.cached_prompts;
  if (!o.replay.empty()) w["replay"] = o.replay_source;
  j["workload"] = w;
  nlohmann::ordered_json slo = nlohmann::ordered_json::object();
  if (o.slo.ttft_ms) slo["ttft_ms"] = *o.slo.ttft_ms;
  if (o.slo.tpot_ms) slo["tpot_ms"] = *o.slo.tpot_ms;
  if (o.slo.e2e_ms) slo["e2e_ms"] = *o.slo.e2e_ms;
  j["slo"] = slo;
  j["target_rate"] =
      o.target_rate > 0 ? nlohmann::ordered_json(o.target_rate) : nlohmann::ordered_json();
  j["target_attainment"] = o.target_attainment;
  nlohmann::ordered_json deployments = nlohmann::ordered_json::array();
  for (const DeploymentResult& r : report.results) {
    nlohmann::ordered_json d;
    d["deployment"] = r.deployment.Name();
    d["prefill_nodes"] = r.deployment.n_prefill;
    d["decode_nodes"] = r.deployment.n_decode;
    d["colocated_nodes"] = r.deployment.n_mixed;
    d["max_rate_meeting_target"] =
        r.max_rate_meeting > 0 ? Num(r.max_rate_meeting) : nlohmann::ordered_json();
    nlohmann::ordered_json points = nlohmann::ordered_json::array();
    for (const PlanPoint& p : r.points) {
      nlohmann::ordered_json pj;
      pj["request_rate"] = p.rate;
      const nlohmann::ordered_json summary = SummaryToJson(p.summary);
      for (const auto& item : summary.items()) pj[item.key()] = item.value();
      points.push_back(std::move(pj));
    }
    d["rates"] = std::move(points);
    deployments.push_back(std::move(d));
  }
  j["deployments"] = std::move(deployments);
  nlohmann::ordered_json rec;
  rec["found"] = report.recommendation.found;
  rec["deployment"] = report.recommendation.reason.empty() && !report.recommendation.found
                          ? nlohmann::ordered_json()
                          : nlohmann::ordered_json(report.recommendation.deployment.Name());
  rec["prefill_nodes"] = report.recommendation.deployment.n_prefill;
  rec["decode_nodes"] = report.recommendation.deployment.n_decode;
  rec["colocated_nodes"] = report.recommendation.deployment.n_mixed;
  rec["reason"] = report.recommendation.reason;
  j["recommendation"] = rec;
  return j;
}

std::string PlanTable(const PlanOptions& o, const PlanReport& report) {
  std::string out =
      absl::StrFormat("%-12s %8s %8s %8s %7s %9s %9s %9s %8s %8s %8s %8s %8s\n", "deployment",
                      "rate", "req/s", "goodput", "attain", "TTFT p50", "TTFT p90", "TTFT p99",
                      "TPOT p50", "TPOT p90", "TPOT p99", "ITL p50", "ITL p99");
  int short_runs = 0;
  for (const DeploymentResult& r : report.results) {
    for (const PlanPoint& p : r.points) {
      const SimSummary& s = p.summary;
      // Only where it could flip a verdict: a backlog's own E2Es are long.
      if (s.short_run && MeetsTarget(p, o.target_attainment)) ++short_runs;
      absl::StrAppendFormat(
          &out, "%-12s %8.4g %8.3f %8.3f %6.1f%% %9.1f %9.1f %9.1f %8.2f %8.2f %8.2f %8.2f %8.2f\n",
          r.deployment.Name(), p.rate, s.request_throughput, s.goodput, 100 * s.slo_attainment,
          At(s.ttft_ms, 50), At(s.ttft_ms, 90), At(s.ttft_ms, 99), At(s.tpot_ms, 50),
          At(s.tpot_ms, 90), At(s.tpot_ms, 99), At(s.itl_ms, 50), At(s.itl_ms, 99));
    }
  }
  absl::StrAppend(&out, "\nrecommended: ", report.recommendation.reason, "\n");
  if (short_runs > 0) {
    absl::StrAppendFormat(&out,
                          "note: %d of the runs meeting the target have arrivals spanning under 4 "
                          "median E2Es, too short to tell a backlog from a pipeline filling up: "
                          "raise --num-prompts\n",
                          short_runs);
  }
  return out;
}

std::string PlanSvg(const PlanOptions& o, const PlanReport& report) {
  loadgen::SvgPlot plot;
  plot.title = "pdserve plan: simulated goodput against rate";
  plot.x_label = "request rate (req/s)";
  plot.y_label = "goodput (req/s meeting the SLO)";
  for (const DeploymentResult& r : report.results) {
    loadgen::SvgSeries s;
    s.name = r.deployment.Name();
    s.markers = true;
    for (const PlanPoint& p : r.points) s.points.emplace_back(p.rate, p.summary.goodput);
    plot.series.push_back(std::move(s));
  }
  std::string slo;
  if (o.slo.ttft_ms) absl::StrAppend(&slo, " TTFT<=", *o.slo.ttft_ms, "ms");
  if (o.slo.tpot_ms) absl::StrAppend(&slo, " TPOT<=", *o.slo.tpot_ms, "ms");
  if (o.slo.e2e_ms) absl::StrAppend(&slo, " E2E<=", *o.slo.e2e_ms, "ms");
  plot.note = absl::StrCat(
      "profile ", o.profile.name, "; SLO", slo.empty() ? " none" : slo, "; recommended ",
      report.recommendation.found ? report.recommendation.deployment.Name() : "none");
  return loadgen::RenderSvg(plot);
}

}  // namespace pdserve::planner
