#include "loadgen/plots.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

#include "absl/strings/str_cat.h"
#include "loadgen/stats.h"
#include "loadgen/svg.h"

namespace pdserve::loadgen {
namespace {

// (value, fraction of requests at or below it).
std::vector<std::pair<double, double>> Cdf(std::vector<double> values) {
  values.erase(
      std::remove_if(values.begin(), values.end(), [](double v) { return !std::isfinite(v); }),
      values.end());
  std::sort(values.begin(), values.end());
  std::vector<std::pair<double, double>> points;
  const double n = static_cast<double>(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    // A vertical step at each sample keeps the curve honest for few samples.
    points.emplace_back(values[i], static_cast<double>(i) / n);
    points.emplace_back(values[i], static_cast<double>(i + 1) / n);
  }
  return points;
}

std::string RunName(const RunSummary& s) {
  return absl::StrCat("rate ", RateText(s.config.request_rate));
}

}  // namespace

absl::StatusOr<std::vector<std::string>> WritePlots(const std::string& dir,
                                                    const std::vector<RunReport>& runs,
                                                    const std::string& title) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return absl::UnavailableError(
        absl::StrCat("cannot create --plot-dir ", dir, ": ", ec.message()));
  std::vector<std::string> written;
  auto write = [&](const std::string& name, const SvgPlot& plot) -> absl::Status {
    const std::string path = (std::filesystem::path(dir) / name).string();
    absl::Status st = WriteFile(path, RenderSvg(plot));
    if (st.ok()) written.push_back(path);
    return st;
  };

  using Getter = std::function<double(const RequestRecord&)>;
  struct CdfSpec {
    const char* file;
    const char* name;
    Getter get;
  };
  const std::vector<CdfSpec> cdfs = {
      {"ttft_cdf.svg", "TTFT", [](const RequestRecord& r) { return r.ttft_ms; }},
      {"tpot_cdf.svg", "TPOT", [](const RequestRecord& r) { return r.tpot_ms; }},
      {"e2e_cdf.svg", "end-to-end latency", [](const RequestRecord& r) { return r.e2e_ms; }},
  };
  for (const CdfSpec& spec : cdfs) {
    SvgPlot plot;
    plot.title = absl::StrCat(spec.name, " CDF — ", title);
    plot.x_label = absl::StrCat(spec.name, " (ms)");
    plot.y_label = "fraction of successful requests";
    for (const RunReport& run : runs) {
      std::vector<double> values;
      for (const RequestRecord& r : run.records) {
        if (r.success) values.push_back(spec.get(r));
      }
      plot.series.push_back({RunName(run.summary), Cdf(std::move(values)), false});
    }
    if (absl::Status st = write(spec.file, plot); !st.ok()) return st;
  }
  {
    SvgPlot plot;
    plot.title = absl::StrCat("ITL CDF — ", title);
    plot.x_label = "inter-token latency (ms)";
    plot.y_label = "fraction of gaps";
    for (const RunReport& run : runs) {
      std::vector<double> values;
      for (const RequestRecord& r : run.records) {
        if (r.success) values.insert(values.end(), r.itl_ms.begin(), r.itl_ms.end());
      }
      plot.series.push_back({RunName(run.summary), Cdf(std::move(values)), false});
    }
    if (absl::Status st = write("itl_cdf.svg", plot); !st.ok()) return st;
  }
  if (runs.size() < 2) return written;

  // Against the offered rate; "inf" has no place on the axis.
  bool skipped_inf = false;
  auto series = [&](const std::string& name, const std::function<double(const RunReport&)>& get) {
    SvgSeries s{name, {}, true};
    for (const RunReport& run : runs) {
      if (std::isinf(run.summary.config.request_rate)) {
        skipped_inf = true;
        continue;
      }
      s.points.emplace_back(run.summary.config.request_rate, get(run));
    }
    std::sort(s.points.begin(), s.points.end());
    return s;
  };
  auto note = [&] { return skipped_inf ? std::string("the run at rate inf is not shown") : ""; };
  {
    SvgPlot plot;
    plot.title = absl::StrCat("throughput vs rate — ", title);
    plot.x_label = "offered request rate (req/s)";
    plot.y_label = "req/s";
    plot.series.push_back(series("request throughput",
                                 [](const RunReport& r) { return r.summary.request_throughput; }));
    if (runs.front().summary.has_slo) {
      plot.series.push_back(
          series("goodput", [](const RunReport& r) { return r.summary.goodput; }));
    }
    plot.note = note();
    if (absl::Status st = write("throughput_vs_rate.svg", plot); !st.ok()) return st;
  }
  {
    SvgPlot plot;
    plot.title = absl::StrCat("output token throughput vs rate — ", title);
    plot.x_label = "offered request rate (req/s)";
    plot.y_label = "output tokens/s";
    plot.series.push_back(
        series("output tok/s", [](const RunReport& r) { return r.summary.output_throughput; }));
    plot.note = note();
    if (absl::Status st = write("output_throughput_vs_rate.svg", plot); !st.ok()) return st;
  }
  // p50 and p99 from the records, whatever --percentiles asked for.
  for (const CdfSpec& spec : cdfs) {
    SvgPlot plot;
    plot.title = absl::StrCat(spec.name, " vs rate — ", title);
    plot.x_label = "offered request rate (req/s)";
    plot.y_label = absl::StrCat(spec.name, " (ms)");
    for (double p : {50.0, 99.0}) {
      plot.series.push_back(series(PercentileName(p), [&](const RunReport& run) {
        std::vector<double> values;
        for (const RequestRecord& r : run.records) {
          if (r.success && std::isfinite(spec.get(r))) values.push_back(spec.get(r));
        }
        return Percentile(std::move(values), p);
      }));
    }
    plot.note = note();
    std::string file = spec.file;
    file.replace(file.find("_cdf"), 4, "_vs_rate");
    if (absl::Status st = write(file, plot); !st.ok()) return st;
  }
  return written;
}

}  // namespace pdserve::loadgen
