#include "loadgen/report.h"

#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace pdserve::loadgen {
namespace {

// The attainment DistServe's goodput is usually quoted at.
constexpr double kAttainmentTarget = 0.9;

std::string Ms(double v) { return std::isnan(v) ? "-" : absl::StrFormat("%.2f", v); }

nlohmann::ordered_json Number(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

nlohmann::ordered_json DistributionToJson(const Distribution& d) {
  nlohmann::ordered_json j;
  j["count"] = d.count;
  j["mean"] = Number(d.mean);
  j["std"] = Number(d.stddev);
  for (const auto& [p, v] : d.percentiles) j[PercentileName(p)] = Number(v);
  return j;
}

nlohmann::ordered_json RateJson(double rate) {
  if (std::isinf(rate)) return "inf";
  return rate;
}

std::string SloText(const Slo& slo) {
  std::string s;
  if (slo.ttft_ms) absl::StrAppend(&s, " ttft<=", *slo.ttft_ms, "ms");
  if (slo.tpot_ms) absl::StrAppend(&s, " tpot<=", *slo.tpot_ms, "ms");
  if (slo.e2e_ms) absl::StrAppend(&s, " e2e<=", *slo.e2e_ms, "ms");
  return s;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}}), "\"");
}

std::string CsvNumber(double v) { return std::isfinite(v) ? absl::StrFormat("%.3f", v) : ""; }

const char* Status(const RequestRecord& r) {
  if (!r.sent) return "not_sent";
  if (r.success) return "ok";
  return r.cancelled ? "cancelled" : "failed";
}

}  // namespace

std::string RateText(double rate) { return std::isinf(rate) ? "inf" : absl::StrFormat("%g", rate); }

void PrintRunTable(const RunSummary& run, const std::vector<double>& percentiles, const Slo& slo,
                   FILE* out) {
  std::string mode = absl::StrCat("rate ", RateText(run.config.request_rate));
  if (!std::isinf(run.config.request_rate) && run.config.burstiness != 1.0) {
    absl::StrAppend(&mode, absl::StrFormat(" (gamma, burstiness %g)", run.config.burstiness));
  }
  if (run.config.max_concurrency > 0) {
    absl::StrAppend(&mode, ", max concurrency ", run.config.max_concurrency);
  }
  std::fprintf(out, "============ loadgen result: %s ============\n", mode.c_str());
  std::fprintf(out, "%-22s %d prompts: %d ok, %d failed, %d cancelled, %d not sent\n", "requests",
               run.num_prompts, run.completed, run.failed, run.cancelled, run.not_sent);
  std::fprintf(out, "%-22s %.2f s\n", "duration", run.duration_s);
  if (run.config.warmup_window_s > 0 || run.config.cooldown_window_s > 0) {
    std::fprintf(out, "%-22s %.2f s (first %g s and last %g s left out: %d requests)\n",
                 "measured window", run.window_s, run.config.warmup_window_s,
                 run.config.cooldown_window_s, run.excluded);
  }
  std::fprintf(out, "%-22s %lld (usage for %d of %d; planned %lld; prefix-cached %s)\n",
               "input tokens", static_cast<long long>(run.total_input_tokens), run.input_from_usage,
               run.completed, static_cast<long long>(run.planned_input_tokens),
               run.cached_reported == 0
                   ? "not reported"
                   : absl::StrFormat("%lld, reported for %d of %d",
                                     static_cast<long long>(run.cached_input_tokens),
                                     run.cached_reported, run.completed)
                         .c_str());
  std::fprintf(out, "%-22s %lld\n", "output tokens",
               static_cast<long long>(run.total_output_tokens));
  std::fprintf(out, "%-22s %.3f req/s, %.2f output tok/s, %.2f total tok/s\n", "throughput",
               run.request_throughput, run.output_throughput, run.total_token_throughput);
  if (run.has_slo) {
    std::fprintf(out, "%-22s %.3f req/s (%d requests meet%s; attainment %.1f%%)\n", "goodput",
                 run.goodput, run.good_requests, SloText(slo).c_str(), 100 * run.slo_attainment);
  }
  std::fprintf(out, "%-12s %10s %10s", "latency ms", "mean", "std");
  for (double p : percentiles) std::fprintf(out, " %10s", PercentileName(p).c_str());
  std::fprintf(out, "\n");
  auto row = [&](const char* name, const Distribution& d) {
    std::fprintf(out, "  %-10s %10s %10s", name, Ms(d.mean).c_str(), Ms(d.stddev).c_str());
    for (const auto& pv : d.percentiles) std::fprintf(out, " %10s", Ms(pv.second).c_str());
    std::fprintf(out, "\n");
  };
  row("TTFT", run.ttft_ms);
  row("TPOT", run.tpot_ms);
  row("ITL", run.itl_ms);
  row("E2E", run.e2e_ms);
  row("dispatch", run.dispatch_delay_ms);  // how late the load generator sent
  if (!run.stages.empty()) {
    std::fprintf(out, "%-20s %6s %10s %10s %10s\n", "stage ms (server)", "n", "mean", "p50", "p99");
    for (const StageStats& s : run.stages) {
      std::fprintf(out, "  %-18s %6zu %10s %10s %10s\n", s.stage.c_str(), s.count,
                   Ms(s.mean_ms).c_str(), Ms(s.p50_ms).c_str(), Ms(s.p99_ms).c_str());
    }
  }
  for (const std::string& e : run.errors) std::fprintf(out, "error: %s\n", e.c_str());
  std::fflush(out);
}

void PrintSweepTable(const std::vector<RunReport>& runs, FILE* out) {
  std::fprintf(out, "============ loadgen sweep ============\n");
  std::fprintf(out, "%8s %8s %10s %9s %9s %9s %9s %9s %9s %9s %s\n", "rate", "req/s", "out tok/s",
               "goodput", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "E2E p50", "E2E p99",
               "ok/failed/cancelled/not sent");
  for (const RunReport& r : runs) {
    const RunSummary& s = r.summary;
    auto pct = [](const Distribution& d, double p) { return Ms(d.At(p)); };
    std::fprintf(out, "%8s %8.3f %10.2f %9s %9s %9s %9s %9s %9s %9s %d/%d/%d/%d\n",
                 RateText(s.config.request_rate).c_str(), s.request_throughput, s.output_throughput,
                 s.has_slo ? absl::StrFormat("%.3f", s.goodput).c_str() : "-",
                 pct(s.ttft_ms, 50).c_str(), pct(s.ttft_ms, 99).c_str(), pct(s.tpot_ms, 50).c_str(),
                 pct(s.tpot_ms, 99).c_str(), pct(s.e2e_ms, 50).c_str(), pct(s.e2e_ms, 99).c_str(),
                 s.completed, s.failed, s.cancelled, s.not_sent);
  }
  std::fflush(out);
}

nlohmann::ordered_json RunToJson(const RunSummary& s) {
  nlohmann::ordered_json j;
  j["request_rate"] = RateJson(s.config.request_rate);
  j["burstiness"] = s.config.burstiness;
  j["max_concurrency"] =
      s.config.max_concurrency > 0 ? nlohmann::ordered_json(s.config.max_concurrency) : nullptr;
  j["duration_s"] = s.duration_s;
  j["warmup_window_s"] = s.config.warmup_window_s;
  j["cooldown_window_s"] = s.config.cooldown_window_s;
  j["window_s"] = s.window_s;
  j["excluded"] = s.excluded;  // sent outside the window, counted nowhere else
  j["num_prompts"] = s.num_prompts;
  j["completed"] = s.completed;
  j["failed"] = s.failed;
  j["cancelled"] = s.cancelled;
  j["not_sent"] = s.not_sent;
  j["total_input_tokens"] = s.total_input_tokens;
  j["planned_input_tokens"] = s.planned_input_tokens;
  j["input_tokens_from_usage"] = s.input_from_usage;
  j["cached_input_tokens"] = s.cached_input_tokens;
  j["cached_input_tokens_reported"] = s.cached_reported;  // requests whose usage had the count
  j["total_output_tokens"] = s.total_output_tokens;
  j["request_throughput"] = s.request_throughput;
  j["output_throughput"] = s.output_throughput;
  j["total_token_throughput"] = s.total_token_throughput;
  j["goodput"] = s.has_slo ? nlohmann::ordered_json(s.goodput) : nullptr;
  j["good_requests"] = s.has_slo ? nlohmann::ordered_json(s.good_requests) : nullptr;
  j["slo_attainment"] = s.has_slo ? nlohmann::ordered_json(s.slo_attainment) : nullptr;
  j["ttft_ms"] = DistributionToJson(s.ttft_ms);
  j["tpot_ms"] = DistributionToJson(s.tpot_ms);
  j["itl_ms"] = DistributionToJson(s.itl_ms);
  j["e2e_ms"] = DistributionToJson(s.e2e_ms);
  j["dispatch_delay_ms"] = DistributionToJson(s.dispatch_delay_ms);
  nlohmann::ordered_json stages = nlohmann::ordered_json::object();
  for (const StageStats& st : s.stages) {
    stages[st.stage] = {{"count", st.count},
                        {"mean", Number(st.mean_ms)},
                        {"p50", Number(st.p50_ms)},
                        {"p99", Number(st.p99_ms)}};
  }
  j["stages_ms"] = stages;
  j["errors"] = s.errors;
  return j;
}

nlohmann::ordered_json SloToJson(const Slo& slo) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (slo.ttft_ms) j["ttft_ms"] = *slo.ttft_ms;
  if (slo.tpot_ms) j["tpot_ms"] = *slo.tpot_ms;
  if (slo.e2e_ms) j["e2e_ms"] = *slo.e2e_ms;
  return j;
}

nlohmann::ordered_json ResultJson(const nlohmann::ordered_json& metadata,
                                  const std::vector<double>& percentiles, const Slo& slo,
                                  const std::vector<RunReport>& runs) {
  nlohmann::ordered_json j;
  j["metadata"] = metadata;
  j["percentiles"] = percentiles;
  j["slo"] = SloToJson(slo);
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const RunReport& r : runs) list.push_back(RunToJson(r.summary));
  j["runs"] = list;
  if (runs.size() > 1) {
    nlohmann::ordered_json sweep;
    double best_goodput = 0, best_throughput = 0, max_rate_meeting = -1;
    for (const RunReport& r : runs) {
      const RunSummary& s = r.summary;
      best_throughput = std::max(best_throughput, s.request_throughput);
      if (s.has_slo) best_goodput = std::max(best_goodput, s.goodput);
      if (s.has_slo && std::isfinite(s.config.request_rate) &&
          s.slo_attainment >= kAttainmentTarget) {
        max_rate_meeting = std::max(max_rate_meeting, s.config.request_rate);
      }
    }
    sweep["max_request_throughput"] = best_throughput;
    sweep["max_goodput"] = slo.empty() ? nullptr : nlohmann::ordered_json(best_goodput);
    // DistServe's per-rate view: the highest offered rate at which 90% of
    // the requests meet every SLO.
    sweep["max_rate_at_90pct_slo_attainment"] =
        slo.empty() || max_rate_meeting < 0 ? nullptr : nlohmann::ordered_json(max_rate_meeting);
    j["sweep"] = sweep;
  }
  return j;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  f << text;
  f.close();
  if (!f) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string DetailedCsv(const std::vector<RunReport>& runs) {
  std::string csv =
      "run,request_rate,id,start_offset_s,ttft_ms,tpot_ms,e2e_ms,input_tokens,output_tokens,"
      "success,status,error\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string rate = RateText(runs[i].summary.config.request_rate);
    for (const RequestRecord& r : runs[i].records) {
      absl::StrAppend(&csv, i, ",", rate, ",", CsvField(r.id), ",", CsvNumber(r.start_offset_s),
                      ",", CsvNumber(r.ttft_ms), ",", CsvNumber(r.tpot_ms), ",",
                      CsvNumber(r.e2e_ms), ",", r.sent ? r.input_tokens : r.planned_input_tokens,
                      ",", r.output_tokens, ",", r.success ? "true" : "false", ",", Status(r), ",",
                      CsvField(r.error), "\n");
    }
  }
  return csv;
}

}  // namespace pdserve::loadgen
