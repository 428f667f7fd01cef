// Puts several result files (--result-json) side by side: a table and SVG
// figures against the offered rate, one line per file. For experiments that
// run the same sweep on different deployments.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::loadgen {

struct ComparedRun {
  double rate = 0.0;  // +inf for "inf"
  double request_throughput = 0.0;
  double output_throughput = 0.0;
  double goodput = 0.0;                         // NaN without SLOs
  double ttft_p50_ms = 0.0, ttft_p99_ms = 0.0;  // NaN when not recorded
  double tpot_p50_ms = 0.0, tpot_p99_ms = 0.0;
  double e2e_p99_ms = 0.0;
};

struct ComparedResult {
  std::string label;  // metadata.label, else the file name
  std::vector<ComparedRun> runs;
};

// Reads one --result-json file; the error names the file.
absl::StatusOr<ComparedResult> LoadResult(const std::string& path);

void PrintComparison(const std::vector<ComparedResult>& results, FILE* out);

// compare_goodput_vs_rate.svg (when the files have SLOs),
// compare_throughput_vs_rate.svg, compare_ttft_p99_vs_rate.svg,
// compare_tpot_p99_vs_rate.svg; returns the files written.
absl::StatusOr<std::vector<std::string>> WriteComparisonPlots(
    const std::string& dir, const std::vector<ComparedResult>& results);

}  // namespace pdserve::loadgen
