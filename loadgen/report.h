// A benchmark's output: the terminal table, the result JSON and the
// per-request CSV.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "loadgen/stats.h"
#include "loadgen/summary.h"
#include "nlohmann/json.hpp"

namespace pdserve::loadgen {

struct RunReport {
  RunSummary summary;
  std::vector<RequestRecord> records;
};

// "inf" or "%g".
std::string RateText(double rate);

void PrintRunTable(const RunSummary& run, const std::vector<double>& percentiles, const Slo& slo,
                   FILE* out);
// One line per rate.
void PrintSweepTable(const std::vector<RunReport>& runs, FILE* out);

nlohmann::ordered_json RunToJson(const RunSummary& run);
nlohmann::ordered_json SloToJson(const Slo& slo);
// {"metadata": ..., "percentiles": [...], "slo": ..., "runs": [...], "sweep": ...}
nlohmann::ordered_json ResultJson(const nlohmann::ordered_json& metadata,
                                  const std::vector<double>& percentiles, const Slo& slo,
                                  const std::vector<RunReport>& runs);

// Writes `text` to `path` (replacing it); the error names the path.
absl::Status WriteFile(const std::string& path, const std::string& text);
// One row per prompt of every run: run, request_rate, id, start_offset_s,
// ttft_ms, tpot_ms, e2e_ms, input_tokens, output_tokens, success, status,
// error. Empty cells for unknown values.
std::string DetailedCsv(const std::vector<RunReport>& runs);

}  // namespace pdserve::loadgen
