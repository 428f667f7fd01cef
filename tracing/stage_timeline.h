// Per-request stage timings. Each process times its own stages with its own
// monotonic clock (common/clock.h), as offsets from when it received the
// request; only durations cross machines. The router shifts each node's
// timings by when it sent that node the request (its own clock) to build one
// timeline per request, logs it as one JSON line, and exports it as spans.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/clock.h"

namespace pdserve::tracing {

// In pipeline order.
enum class Stage : uint8_t {
  kRouterQueue,
  kRouterTokenize,
  kPrefillQueue,
  kPrefillCompute,
  kKvTransfer,
  kDecodeWaitKv,
  kDecodeQueue,
  kDecodeFirstStep,
  kDecodeGenerate,
};
inline constexpr size_t kNumStages = 9;

const std::array<Stage, kNumStages>& AllStages();
// "router.queue", "prefill.compute", ...
std::string_view StageName(Stage stage);
std::optional<Stage> StageFromName(std::string_view name);

struct StageInterval {
  int64_t start_offset_ns = 0;  // From the timeline's origin.
  int64_t duration_ns = 0;

  int64_t end_offset_ns() const { return start_offset_ns + duration_ns; }
  bool operator==(const StageInterval&) const = default;
};

// A value type: stage -> interval, each stage at most once.
class StageTimeline {
 public:
  // Replaces an earlier interval of the same stage.
  void Record(Stage stage, StageInterval interval);
  std::optional<StageInterval> Get(Stage stage) const;
  bool empty() const;

  // Recorded stages in pipeline order.
  std::vector<std::pair<Stage, StageInterval>> Entries() const;
  // Latest end offset over all stages; 0 when empty.
  int64_t end_offset_ns() const;

  // Adds the stages another process measured. Their offsets count from when
  // that process received the request, which this process places at
  // `remote_origin_offset_ns` on its own timeline (e.g. when it sent the
  // RPC). Network delay is not modelled: only the remote durations are exact.
  void MergeRemote(const StageTimeline& remote, int64_t remote_origin_offset_ns);

  bool operator==(const StageTimeline&) const = default;

 private:
  std::array<std::optional<StageInterval>, kNumStages> stages_;
};

// Times one stage; records it when stopped or destroyed.
//
//   StageTimer timer(&timeline, request_received_ns, Stage::kPrefillCompute);
//   RunPrefill();
//   timer.Stop();
class StageTimer {
 public:
  using NowFn = int64_t (*)();

  // `origin_ns` is the timeline's origin on the same clock as `now`.
  StageTimer(StageTimeline* timeline, int64_t origin_ns, Stage stage, NowFn now = &MonoNowNs);
  ~StageTimer();
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

  // Records the stage and returns its duration; later calls return it again.
  int64_t Stop();

 private:
  StageTimeline* const timeline_;
  const Stage stage_;
  const NowFn now_;
  const int64_t origin_ns_;
  const int64_t start_ns_;
  std::optional<int64_t> duration_ns_;
};

// {"router.queue":{"start_ns":0,"duration_ns":1200},...} in pipeline order.
nlohmann::ordered_json TimelineToJson(const StageTimeline& timeline);
// Inverse of TimelineToJson; unknown stage names and malformed entries are
// skipped (timings are diagnostics: never fail a request over them).
StageTimeline TimelineFromJson(const nlohmann::ordered_json& json);

// One JSON log line (no trailing newline) per finished request:
// {"request_id":...,"trace_id":...,"total_ns":...,"stages":{...}}.
std::string RequestTimingLogLine(std::string_view request_id, std::string_view trace_id,
                                 const StageTimeline& timeline);

}  // namespace pdserve::tracing
