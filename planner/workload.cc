#include "planner/workload.h"

#include <cmath>

#include "absl/strings/str_cat.h"
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

}  // namespace pdserve::planner
