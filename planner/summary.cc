#include "planner/summary.h"

#include <algorithm>
#include <cmath>

namespace pdserve::planner {
namespace {

nlohmann::ordered_json DistributionJson(const loadgen::Distribution& d) {
  nlohmann::ordered_json j;
  j["count"] = d.count;
  auto num = [](double v) {
    return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json();
  };
  j["mean"] = num(d.mean);
  for (const auto& [p, v] : d.percentiles) j[loadgen::PercentileName(p)] = num(v);
  return j;
}

}  // namespace

SimSummary Summarize(const std::vector<SimRequest>& requests, const SimResult& result,
                     const loadgen::Slo& slo, const std::vector<double>& percentiles) {
  SimSummary s;
  std::vector<double> ttft, tpot, itl, e2e;
  int64_t output_tokens = 0;
  for (size_t i = 0; i < result.requests.size(); ++i) {
    const RequestResult& r = result.requests[i];
    if (!r.completed) {
      ++s.rejected;
      continue;
    }
    ++s.completed;
    output_tokens += requests[i].output_tokens;
    ttft.push_back(r.ttft_s * 1e3);
    e2e.push_back(r.e2e_s * 1e3);
    const double tpot_ms = r.tpot_s * 1e3;
    if (!std::isnan(tpot_ms)) tpot.push_back(tpot_ms);
    for (double g : r.itl_s) itl.push_back(g * 1e3);
    if (loadgen::MeetsSlo(slo, r.ttft_s * 1e3, tpot_ms, r.e2e_s * 1e3)) ++s.good_requests;
  }
  const double start = requests.empty() ? 0 : requests.front().arrival_s;
  s.duration_s = result.end_s - start;
  if (s.duration_s > 0) {
    s.request_throughput = s.completed / s.duration_s;
    s.output_throughput = static_cast<double>(output_tokens) / s.duration_s;
    s.goodput = s.good_requests / s.duration_s;
  }
  s.steady_goodput = s.goodput;
  if (!requests.empty() && !e2e.empty()) {
    std::vector<double> sorted = e2e;
    std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
    const double median_e2e_s = sorted[sorted.size() / 2] / 1e3;
    const double span = requests.back().arrival_s - start;
    const double steady = std::max(span, s.duration_s - median_e2e_s);
    if (steady > 0) s.steady_goodput = s.good_requests / steady;
    s.short_run = span < 4 * median_e2e_s;
  }
  if (!requests.empty()) s.slo_attainment = static_cast<double>(s.good_requests) / requests.size();
  s.ttft_ms = loadgen::Describe(ttft, percentiles);
  s.tpot_ms = loadgen::Describe(tpot, percentiles);
  s.itl_ms = loadgen::Describe(itl, percentiles);
  s.e2e_ms = loadgen::Describe(e2e, percentiles);
  return s;
}

nlohmann::ordered_json SummaryToJson(const SimSummary& s) {
  nlohmann::ordered_json j;
  j["completed"] = s.completed;
  j["rejected"] = s.rejected;
  j["duration_s"] = s.duration_s;
  j["request_throughput"] = s.request_throughput;
  j["output_throughput"] = s.output_throughput;
  j["good_requests"] = s.good_requests;
  j["goodput"] = s.goodput;
  j["steady_goodput"] = s.steady_goodput;
  j["short_run"] = s.short_run;
  j["slo_attainment"] = s.slo_attainment;
  j["ttft_ms"] = DistributionJson(s.ttft_ms);
  j["tpot_ms"] = DistributionJson(s.tpot_ms);
  j["itl_ms"] = DistributionJson(s.itl_ms);
  j["e2e_ms"] = DistributionJson(s.e2e_ms);
  return j;
}

}  // namespace pdserve::planner
