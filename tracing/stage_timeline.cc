#include "tracing/stage_timeline.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace pdserve::tracing {
namespace {

constexpr std::array<std::string_view, kNumStages> kStageNames = {
    "router.queue",   "router.tokenize", "prefill.queue",     "prefill.compute", "kv.transfer",
    "decode.wait_kv", "decode.queue",    "decode.first_step", "decode.generate",
};

}  // namespace

const std::array<Stage, kNumStages>& AllStages() {
  static constexpr std::array<Stage, kNumStages> kAll = {
      Stage::kRouterQueue,    Stage::kRouterTokenize,  Stage::kPrefillQueue,
      Stage::kPrefillCompute, Stage::kKvTransfer,      Stage::kDecodeWaitKv,
      Stage::kDecodeQueue,    Stage::kDecodeFirstStep, Stage::kDecodeGenerate,
  };
  return kAll;
}

std::string_view StageName(Stage stage) { return kStageNames[static_cast<size_t>(stage)]; }

std::optional<Stage> StageFromName(std::string_view name) {
  for (size_t i = 0; i < kNumStages; ++i) {
    if (kStageNames[i] == name) return static_cast<Stage>(i);
  }
  return std::nullopt;
}

void StageTimeline::Record(Stage stage, StageInterval interval) {
  stages_[static_cast<size_t>(stage)] = interval;
}

std::optional<StageInterval> StageTimeline::Get(Stage stage) const {
  return stages_[static_cast<size_t>(stage)];
}

bool StageTimeline::empty() const {
  return std::none_of(stages_.begin(), stages_.end(), [](const auto& s) { return s.has_value(); });
}

std::vector<std::pair<Stage, StageInterval>> StageTimeline::Entries() const {
  std::vector<std::pair<Stage, StageInterval>> entries;
  for (Stage stage : AllStages()) {
    if (const auto& interval = stages_[static_cast<size_t>(stage)]) {
      entries.emplace_back(stage, *interval);
    }
  }
  return entries;
}

int64_t StageTimeline::end_offset_ns() const {
  int64_t end = 0;
  for (const auto& interval : stages_) {
    if (interval) end = std::max(end, interval->end_offset_ns());
  }
  return end;
}

void StageTimeline::MergeRemote(const StageTimeline& remote, int64_t remote_origin_offset_ns) {
  for (const auto& [stage, interval] : remote.Entries()) {
    Record(stage, {interval.start_offset_ns + remote_origin_offset_ns, interval.duration_ns});
  }
}

StageTimer::StageTimer(StageTimeline* timeline, int64_t origin_ns, Stage stage, NowFn now)
    : timeline_(timeline), stage_(stage), now_(now), origin_ns_(origin_ns), start_ns_(now()) {}

StageTimer::~StageTimer() { Stop(); }

int64_t StageTimer::Stop() {
  if (!duration_ns_) {
    duration_ns_ = now_() - start_ns_;
    timeline_->Record(stage_, {start_ns_ - origin_ns_, *duration_ns_});
  }
  return *duration_ns_;
}

nlohmann::ordered_json TimelineToJson(const StageTimeline& timeline) {
  nlohmann::ordered_json json = nlohmann::ordered_json::object();
  for (const auto& [stage, interval] : timeline.Entries()) {
    json[std::string(StageName(stage))] = {{"start_ns", interval.start_offset_ns},
                                           {"duration_ns", interval.duration_ns}};
  }
  return json;
}

StageTimeline TimelineFromJson(const nlohmann::ordered_json& json) {
  StageTimeline timeline;
  if (!json.is_object()) return timeline;
  for (const auto& [name, entry] : json.items()) {
    const std::optional<Stage> stage = StageFromName(name);
    if (!stage || !entry.is_object()) continue;
    const auto start = entry.find("start_ns");
    const auto duration = entry.find("duration_ns");
    if (start == entry.end() || duration == entry.end() || !start->is_number_integer() ||
        !duration->is_number_integer()) {
      continue;
    }
    timeline.Record(*stage, {start->get<int64_t>(), duration->get<int64_t>()});
  }
  return timeline;
}

std::string RequestTimingLogLine(std::string_view request_id, std::string_view trace_id,
                                 const StageTimeline& timeline) {
  nlohmann::ordered_json line;
  line["request_id"] = request_id;
  line["trace_id"] = trace_id;
  line["total_ns"] = timeline.end_offset_ns();
  line["stages"] = TimelineToJson(timeline);
  // Replace invalid UTF-8 instead of throwing: a request id is client data.
  return line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace pdserve::tracing
