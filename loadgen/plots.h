// The SVG figures of a benchmark (--plot-dir).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadgen/report.h"

namespace pdserve::loadgen {

// Latency CDFs (ttft_cdf.svg, tpot_cdf.svg, itl_cdf.svg, e2e_cdf.svg; one
// line per run) and, for two runs or more, figures against the offered rate
// (throughput_vs_rate.svg, output_throughput_vs_rate.svg,
// {ttft,tpot,e2e}_vs_rate.svg with p50 and p99). Creates `dir`; returns the
// files written.
absl::StatusOr<std::vector<std::string>> WritePlots(const std::string& dir,
                                                    const std::vector<RunReport>& runs,
                                                    const std::string& title);

}  // namespace pdserve::loadgen
