// A StepObserver that appends one JSON line per engine step to a file
// (`pdserve prefill|decode|mixed --step-log-dir`): what a running node's
// steps looked like and cost, to set beside its profile
// (bench/step_log_report.py).
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/engine.h"

namespace pdserve {

class StepLog : public StepObserver {
 public:
  // Creates (truncates) `path`; an error names the path.
  static absl::StatusOr<std::unique_ptr<StepLog>> Open(const std::string& path);
  ~StepLog() override;
  StepLog(const StepLog&) = delete;
  StepLog& operator=(const StepLog&) = delete;

  // One line: {"start_ns":..,"schedule_ns":..,"forward_ns":..,"total_ns":..,
  // "idle_before_ns":..,"prefill_tokens":..,"attention_pairs":..,
  // "decode_seqs":..,"decode_context":..}, flushed, so the file is whole
  // when the process is killed. A failed write stops the log (logged once).
  void OnStep(const StepRecord& step) override;

 private:
  StepLog(std::FILE* file, std::string path) : file_(file), path_(std::move(path)) {}
  std::FILE* file_;
  std::string path_;
  bool failed_ = false;
};

}  // namespace pdserve
