// Latency statistics and service-level objectives.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::loadgen {

// The p-th percentile (0 <= p <= 100) with linear interpolation between the
// closest ranks (numpy's default, which vLLM's benchmark uses). NaN when
// `values` is empty.
double Percentile(std::vector<double> values, double p);

struct Distribution {
  size_t count = 0;
  double mean = 0.0;  // NaN when empty, like the percentiles
  double stddev = 0.0;
  std::vector<std::pair<double, double>> percentiles;  // (p, value)
  // The value at percentile `p` if it was asked for, else NaN.
  double At(double p) const;
};
Distribution Describe(const std::vector<double>& values, const std::vector<double>& percentiles);

// "50,90,99" -> {50, 90, 99}; each in (0, 100], at least one.
absl::StatusOr<std::vector<double>> ParsePercentiles(const std::string& text);
// "p50", "p99.9": the JSON key and table heading of a percentile.
std::string PercentileName(double p);

// DistServe's per-request SLOs; unset ones are not checked.
struct Slo {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;
  std::optional<double> e2e_ms;
  bool empty() const { return !ttft_ms && !tpot_ms && !e2e_ms; }
};
// Items like "ttft:200", "tpot:50", "e2e:2000" (milliseconds, > 0); an item
// may also hold several separated by commas.
absl::StatusOr<Slo> ParseSlo(const std::vector<std::string>& items);
// `tpot_ms` is ignored (met) for requests with one output token (NaN).
bool MeetsSlo(const Slo& slo, double ttft_ms, double tpot_ms, double e2e_ms);

}  // namespace pdserve::loadgen
