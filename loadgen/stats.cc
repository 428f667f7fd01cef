#include "loadgen/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace pdserve::loadgen {

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const double rank = p / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double frac = rank - static_cast<double>(lo);
  return values[lo] + (values[hi] - values[lo]) * frac;
}

double Distribution::At(double p) const {
  for (const auto& [q, v] : percentiles) {
    if (q == p) return v;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

Distribution Describe(const std::vector<double>& values, const std::vector<double>& percentiles) {
  Distribution d;
  d.count = values.size();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (values.empty()) {
    d.mean = d.stddev = nan;
  } else {
    double sum = 0;
    for (double v : values) sum += v;
    d.mean = sum / static_cast<double>(values.size());
    double sq = 0;
    for (double v : values) sq += (v - d.mean) * (v - d.mean);
    d.stddev = std::sqrt(sq / static_cast<double>(values.size()));  // population, as numpy
  }
  std::vector<double> sorted = values;
  std::sort(sorted.begin(), sorted.end());
  for (double p : percentiles) d.percentiles.emplace_back(p, Percentile(sorted, p));
  return d;
}

absl::StatusOr<std::vector<double>> ParsePercentiles(const std::string& text) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    double p;
    if (!absl::SimpleAtod(part, &p) || !(p > 0 && p <= 100)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--percentiles: '", std::string(part), "' is not a percentile in (0, 100]"));
    }
    out.push_back(p);
  }
  if (out.empty()) return absl::InvalidArgumentError("--percentiles: give at least one");
  return out;
}

std::string PercentileName(double p) { return absl::StrFormat("p%g", p); }

absl::StatusOr<Slo> ParseSlo(const std::vector<std::string>& items) {
  Slo slo;
  for (const std::string& item : items) {
    for (absl::string_view part : absl::StrSplit(item, absl::ByAnyChar(", "), absl::SkipEmpty())) {
      const std::vector<absl::string_view> kv = absl::StrSplit(part, absl::MaxSplits(':', 1));
      double ms;
      if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &ms) || !(ms > 0) || !std::isfinite(ms)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--goodput: '", std::string(part),
                         "' is not NAME:MILLISECONDS (ttft, tpot or e2e, > 0)"));
      }
      if (kv[0] == "ttft") {
        slo.ttft_ms = ms;
      } else if (kv[0] == "tpot") {
        slo.tpot_ms = ms;
      } else if (kv[0] == "e2e" || kv[0] == "e2el") {
        slo.e2e_ms = ms;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "--goodput: unknown SLO '", std::string(kv[0]), "' (use ttft, tpot or e2e)"));
      }
    }
  }
  return slo;
}

bool MeetsSlo(const Slo& slo, double ttft_ms, double tpot_ms, double e2e_ms) {
  if (slo.ttft_ms && !(ttft_ms <= *slo.ttft_ms)) return false;
  if (slo.tpot_ms && !std::isnan(tpot_ms) && !(tpot_ms <= *slo.tpot_ms)) return false;
  if (slo.e2e_ms && !(e2e_ms <= *slo.e2e_ms)) return false;
  return true;
}

}  // namespace pdserve::loadgen
