#include "planner/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "loadgen/arrivals.h"

namespace pdserve::planner {

absl::StatusOr<std::vector<SimRequest>> BuildSimRequests(const loadgen::WorkloadOptions& workload,
                                                         double rate, double burstiness) {
  if (!(rate > 0)) return absl::InvalidArgumentError(absl::StrCat("rate must be > 0, got ", rate));
  if (!(burstiness > 0) || !std::isfinite(burstiness)) {
    return absl::InvalidArgumentError(absl::StrCat("burstiness must be > 0, got ", burstiness));
  }
  absl::StatusOr<std::vector<loadgen::RequestInput>> inputs =
      loadgen::BuildWorkload(workload, nullptr);
  if (!inputs.ok()) return inputs.status();
  loadgen::ArrivalProcess arrivals(rate, burstiness, loadgen::ArrivalSeed(workload.seed));
  std::vector<SimRequest> out;
  out.reserve(inputs->size());
  double schedule_s = 0;  // absolute schedule, as loadgen's runner keeps it
  for (size_t i = 0; i < inputs->size(); ++i) {
    if (i > 0) schedule_s += arrivals.NextIntervalS();
    SimRequest r;
    r.arrival_s = schedule_s;
    r.input_tokens = (*inputs)[i].input_tokens;
    r.output_tokens = (*inputs)[i].max_tokens;
    out.push_back(r);
  }
  return out;
}

namespace {

constexpr int64_t kMaxTokens = 1000000;
constexpr size_t kMaxRequests = 1000000;

// Splits one CSV record (RFC 4180 quoting: "" is a quote inside quotes).
// Records never span lines in loadgen's files (CsvField quotes newlines, but
// its fields hold none), so a line is a record.
std::vector<std::string> SplitCsvLine(absl::string_view line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else if (c != '\r') {
      fields.back() += c;
    }
  }
  return fields;
}

}  // namespace

absl::StatusOr<std::vector<ReplayRun>> ParseLoadgenCsv(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipWhitespace());
  if (lines.empty()) return absl::InvalidArgumentError("replay csv: empty");
  const std::vector<std::string> header = SplitCsvLine(lines[0]);
  const char* const kNeeded[] = {"run",          "request_rate",  "start_offset_s",
                                 "input_tokens", "output_tokens", "status"};
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < header.size(); ++i) col[header[i]] = i;
  for (const char* name : kNeeded) {
    if (!col.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "replay csv: no \"", name, "\" column (expected pdserve loadgen --detailed-csv)"));
    }
  }
  std::map<int64_t, ReplayRun> runs;
  for (size_t n = 1; n < lines.size(); ++n) {
    const std::vector<std::string> f = SplitCsvLine(lines[n]);
    auto bad = [&](const char* what) {
      return absl::InvalidArgumentError(absl::StrCat("replay csv line ", n + 1, ": ", what));
    };
    if (f.size() != header.size()) return bad("wrong number of fields");
    if (f[col["status"]] == "not_sent") continue;
    int64_t run = 0, input = 0, output = 0;
    double rate = 0, start = 0;
    if (!absl::SimpleAtoi(f[col["run"]], &run) || run < 0) return bad("run is not an index");
    if (!absl::SimpleAtod(f[col["request_rate"]], &rate) || !std::isfinite(rate) || !(rate > 0))
      return bad("request_rate is not a finite rate > 0 (a rate-inf run cannot be replayed)");
    if (!absl::SimpleAtod(f[col["start_offset_s"]], &start) || !std::isfinite(start) || start < 0)
      return bad("start_offset_s is not a time >= 0");
    // The bounds `pdserve plan` puts on a generated workload.
    if (!absl::SimpleAtoi(f[col["input_tokens"]], &input) || input < 1 || input > kMaxTokens)
      return bad("input_tokens is not in [1, 1000000]");
    if (!absl::SimpleAtoi(f[col["output_tokens"]], &output) || output < 0 || output > kMaxTokens)
      return bad("output_tokens is not in [0, 1000000]");
    ReplayRun& r = runs[run];
    if (r.requests.size() >= kMaxRequests) return bad("more than 1000000 requests in one run");
    if (r.requests.empty()) {
      r.rate = rate;
    } else if (r.rate != rate) {
      return bad("one run with two request rates");
    }
    SimRequest q;
    q.arrival_s = start;
    q.input_tokens = static_cast<int32_t>(input);
    // A failed request's received length is a lower bound; at least token #1.
    q.output_tokens = static_cast<int32_t>(std::max<int64_t>(output, 1));
    r.requests.push_back(q);
  }
  std::vector<ReplayRun> out;
  for (auto& [index, run] : runs) {
    std::stable_sort(
        run.requests.begin(), run.requests.end(),
        [](const SimRequest& a, const SimRequest& b) { return a.arrival_s < b.arrival_s; });
    out.push_back(std::move(run));
  }
  if (out.empty()) return absl::InvalidArgumentError("replay csv: no sent request");
  std::stable_sort(out.begin(), out.end(),
                   [](const ReplayRun& a, const ReplayRun& b) { return a.rate < b.rate; });
  return out;
}

absl::StatusOr<std::vector<ReplayRun>> LoadLoadgenCsv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<ReplayRun>> runs = ParseLoadgenCsv(text.str());
  if (!runs.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", runs.status().message()));
  return runs;
}

}  // namespace pdserve::planner
