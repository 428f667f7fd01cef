#include "loadgen/compare.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loadgen/report.h"
#include "loadgen/svg.h"
#include "nlohmann/json.hpp"

namespace pdserve::loadgen {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double Get(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : kNaN;
}

double Pct(const nlohmann::json& run, const char* metric, const char* p) {
  auto it = run.find(metric);
  return it != run.end() && it->is_object() ? Get(*it, p) : kNaN;
}

std::string Cell(double v) { return std::isnan(v) ? "-" : absl::StrFormat("%.2f", v); }

}  // namespace

absl::StatusOr<ComparedResult> LoadResult(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("runs") || !j["runs"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a loadgen result file (no \"runs\" array)"));
  }
  ComparedResult r;
  if (j.contains("metadata") && j["metadata"].is_object() && j["metadata"].contains("label") &&
      j["metadata"]["label"].is_string() && !j["metadata"]["label"].get<std::string>().empty()) {
    r.label = j["metadata"]["label"].get<std::string>();
  } else {
    r.label = std::filesystem::path(path).stem().string();
  }
  for (const nlohmann::json& run : j["runs"]) {
    if (!run.is_object()) continue;
    ComparedRun c;
    const nlohmann::json& rate = run["request_rate"];
    c.rate = rate.is_number() ? rate.get<double>() : std::numeric_limits<double>::infinity();
    c.request_throughput = Get(run, "request_throughput");
    c.output_throughput = Get(run, "output_throughput");
    c.goodput = Get(run, "goodput");
    c.ttft_p50_ms = Pct(run, "ttft_ms", "p50");
    c.ttft_p99_ms = Pct(run, "ttft_ms", "p99");
    c.tpot_p50_ms = Pct(run, "tpot_ms", "p50");
    c.tpot_p99_ms = Pct(run, "tpot_ms", "p99");
    c.e2e_p99_ms = Pct(run, "e2e_ms", "p99");
    r.runs.push_back(c);
  }
  return r;
}

void PrintComparison(const std::vector<ComparedResult>& results, FILE* out) {
  std::fprintf(out, "%-16s %8s %9s %9s %10s %10s %10s %10s\n", "", "rate", "req/s", "goodput",
               "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99");
  for (const ComparedResult& r : results) {
    for (const ComparedRun& c : r.runs) {
      std::fprintf(
          out, "%-16s %8s %9s %9s %10s %10s %10s %10s\n", r.label.c_str(), RateText(c.rate).c_str(),
          Cell(c.request_throughput).c_str(), Cell(c.goodput).c_str(), Cell(c.ttft_p50_ms).c_str(),
          Cell(c.ttft_p99_ms).c_str(), Cell(c.tpot_p50_ms).c_str(), Cell(c.tpot_p99_ms).c_str());
    }
  }
  std::fflush(out);
}

absl::StatusOr<std::vector<std::string>> WriteComparisonPlots(
    const std::string& dir, const std::vector<ComparedResult>& results) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  bool any_goodput = false;
  for (const ComparedResult& r : results) {
    for (const ComparedRun& c : r.runs) any_goodput |= !std::isnan(c.goodput);
  }
  struct Figure {
    const char* file;
    const char* title;
    const char* y_label;
    std::function<double(const ComparedRun&)> get;
  };
  std::vector<Figure> figures = {
      {"compare_throughput_vs_rate.svg", "request throughput vs rate", "req/s",
       [](const ComparedRun& c) { return c.request_throughput; }},
      {"compare_ttft_p99_vs_rate.svg", "p99 TTFT vs rate", "ms",
       [](const ComparedRun& c) { return c.ttft_p99_ms; }},
      {"compare_tpot_p99_vs_rate.svg", "p99 TPOT vs rate", "ms",
       [](const ComparedRun& c) { return c.tpot_p99_ms; }},
  };
  if (any_goodput) {
    figures.insert(figures.begin(), {"compare_goodput_vs_rate.svg", "goodput vs rate", "req/s",
                                     [](const ComparedRun& c) { return c.goodput; }});
  }
  std::vector<std::string> written;
  for (const Figure& f : figures) {
    SvgPlot plot;
    plot.title = f.title;
    plot.x_label = "offered request rate (req/s)";
    plot.y_label = f.y_label;
    bool skipped_inf = false;
    for (const ComparedResult& r : results) {
      SvgSeries s{r.label, {}, true};
      for (const ComparedRun& c : r.runs) {
        if (std::isinf(c.rate)) {
          skipped_inf = true;
          continue;
        }
        s.points.emplace_back(c.rate, f.get(c));
      }
      std::sort(s.points.begin(), s.points.end());
      plot.series.push_back(std::move(s));
    }
    if (skipped_inf) plot.note = "runs at rate inf are not shown";
    const std::string path = (std::filesystem::path(dir) / f.file).string();
    if (absl::Status st = WriteFile(path, RenderSvg(plot)); !st.ok()) return st;
    written.push_back(path);
  }
  return written;
}

}  // namespace pdserve::loadgen
