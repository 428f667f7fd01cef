#include "loadgen/summary.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

namespace pdserve::loadgen {
namespace {
constexpr size_t kMaxErrors = 5;
}  // namespace

const std::vector<std::string>& KnownStages() {
  static const auto* stages = new std::vector<std::string>{
      "router.queue",   "router.tokenize", "prefill.queue",     "prefill.compute", "kv.transfer",
      "decode.wait_kv", "decode.queue",    "decode.first_step", "decode.generate"};
  return *stages;
}

RequestRecord MakeRecord(int index, const RequestInput& input, const RequestOutcome& outcome,
                         int64_t run_start_ns) {
  RequestRecord r;
  r.index = index;
  r.id = input.id;
  r.sent = true;
  r.success = outcome.success;
  r.cancelled = outcome.cancelled;
  r.error = outcome.error;
  r.start_offset_s = static_cast<double>(outcome.send_ns - run_start_ns) / 1e9;
  r.planned_input_tokens = input.input_tokens;
  r.planned_output_tokens = input.max_tokens;
  r.input_from_usage = outcome.input_tokens >= 0;
  r.input_tokens = r.input_from_usage ? outcome.input_tokens : input.input_tokens;
  r.cached_input_tokens = outcome.cached_input_tokens;
  r.cached_reported = outcome.cached_input_tokens_reported;
  r.output_tokens = outcome.output_tokens;
  r.output_from_usage = outcome.output_tokens_from_usage;
  r.stages = outcome.stages;
  r.e2e_ms = static_cast<double>(outcome.end_ns - outcome.send_ns) / 1e6;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (outcome.chunk_ns.empty()) {
    r.ttft_ms = nan;
    r.tpot_ms = nan;
    if (r.success) {
      r.success = false;
      r.error = "no output";
    }
    return r;
  }
  r.ttft_ms = static_cast<double>(outcome.chunk_ns.front() - outcome.send_ns) / 1e6;
  for (size_t i = 1; i < outcome.chunk_ns.size(); ++i) {
    r.itl_ms.push_back(static_cast<double>(outcome.chunk_ns[i] - outcome.chunk_ns[i - 1]) / 1e6);
  }
  r.tpot_ms = r.output_tokens > 1 ? (r.e2e_ms - r.ttft_ms) / (r.output_tokens - 1) : nan;
  return r;
}

RequestRecord NotSentRecord(int index, const RequestInput& input) {
  RequestRecord r;
  r.index = index;
  r.id = input.id;
  r.error = "not sent: time bound reached";
  r.planned_input_tokens = input.input_tokens;
  r.planned_output_tokens = input.max_tokens;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  r.start_offset_s = r.ttft_ms = r.tpot_ms = r.e2e_ms = r.dispatch_delay_ms = nan;
  return r;
}

RunSummary Summarize(const RunConfig& config, const std::vector<RequestRecord>& records,
                     double duration_s, const std::vector<double>& percentiles, const Slo& slo) {
  RunSummary s;
  s.config = config;
  s.duration_s = duration_s;
  s.num_prompts = static_cast<int>(records.size());
  s.has_slo = !slo.empty();
  std::vector<double> ttft, tpot, itl, e2e, dispatch;
  std::map<std::string, std::vector<double>> stage_ms;
  const double window_begin_s = std::max(0.0, config.warmup_window_s);
  const double window_end_s = duration_s - std::max(0.0, config.cooldown_window_s);
  s.window_s = std::max(0.0, window_end_s - window_begin_s);
  const bool windowed = config.warmup_window_s > 0 || config.cooldown_window_s > 0;
  for (const RequestRecord& r : records) {
    if (!r.sent) {
      ++s.not_sent;
      continue;
    }
    // A request outside the window counts nowhere (only in `excluded`); one
    // that never ended (failed, cancelled) is judged by its send time.
    const double end_s = r.start_offset_s + (r.success ? r.e2e_ms / 1e3 : 0.0);
    if (windowed && (r.start_offset_s < window_begin_s || end_s > window_end_s)) {
      ++s.excluded;
      continue;
    }
    if (!std::isnan(r.dispatch_delay_ms)) dispatch.push_back(r.dispatch_delay_ms);
    if (!r.success) {
      if (r.cancelled) {
        ++s.cancelled;
      } else {
        ++s.failed;
        if (s.errors.size() < kMaxErrors &&
            std::find(s.errors.begin(), s.errors.end(), r.error) == s.errors.end()) {
          s.errors.push_back(r.error);
        }
      }
      continue;
    }
    ++s.completed;
    s.total_input_tokens += r.input_tokens;
    s.planned_input_tokens += r.planned_input_tokens;
    s.cached_input_tokens += r.cached_input_tokens;
    if (r.cached_reported) ++s.cached_reported;
    s.total_output_tokens += r.output_tokens;
    if (r.input_from_usage) ++s.input_from_usage;
    ttft.push_back(r.ttft_ms);
    if (!std::isnan(r.tpot_ms)) tpot.push_back(r.tpot_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    e2e.push_back(r.e2e_ms);
    if (MeetsSlo(slo, r.ttft_ms, r.tpot_ms, r.e2e_ms)) ++s.good_requests;
    for (const StageDuration& st : r.stages) {
      stage_ms[st.stage].push_back(static_cast<double>(st.duration_ns) / 1e6);
    }
  }
  if (s.window_s > 0) {
    s.request_throughput = s.completed / s.window_s;
    s.output_throughput = static_cast<double>(s.total_output_tokens) / s.window_s;
    s.total_token_throughput =
        static_cast<double>(s.total_input_tokens + s.total_output_tokens) / s.window_s;
    if (s.has_slo) s.goodput = s.good_requests / s.window_s;
  }
  if (!s.has_slo) s.good_requests = 0;
  const int counted = s.num_prompts - s.excluded;
  if (s.has_slo && counted > 0) {
    s.slo_attainment = static_cast<double>(s.good_requests) / counted;
  }
  s.ttft_ms = Describe(ttft, percentiles);
  s.tpot_ms = Describe(tpot, percentiles);
  s.itl_ms = Describe(itl, percentiles);
  s.e2e_ms = Describe(e2e, percentiles);
  s.dispatch_delay_ms = Describe(dispatch, percentiles);
  auto add_stage = [&](const std::string& name) {
    auto it = stage_ms.find(name);
    if (it == stage_ms.end()) return;
    const Distribution d = Describe(it->second, {50, 99});
    s.stages.push_back({name, d.count, d.mean, d.At(50), d.At(99)});
    stage_ms.erase(it);
  };
  for (const std::string& name : KnownStages()) add_stage(name);
  while (!stage_ms.empty()) add_stage(stage_ms.begin()->first);
  return s;
}

}  // namespace pdserve::loadgen
