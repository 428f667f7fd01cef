#include "engine/step_log.h"

#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<StepLog>> StepLog::Open(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("step log: cannot create ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<StepLog>(new StepLog(f, path));
}

StepLog::~StepLog() { std::fclose(file_); }

void StepLog::OnStep(const StepRecord& s) {
  if (failed_) return;
  const int n =
      std::fprintf(file_,
                   "{\"start_ns\":%" PRId64 ",\"schedule_ns\":%" PRId64 ",\"forward_ns\":%" PRId64
                   ",\"total_ns\":%" PRId64 ",\"idle_before_ns\":%" PRId64
                   ",\"prefill_tokens\":%d,\"attention_pairs\":%.0f,"
                   "\"decode_seqs\":%d,\"decode_context\":%" PRId64 "}\n",
                   s.start_ns, s.schedule_ns, s.forward_ns, s.total_ns, s.idle_before_ns,
                   s.prefill_tokens, s.attention_pairs, s.decode_seqs, s.decode_context);
  if (n < 0 || std::fflush(file_) != 0) {
    failed_ = true;
    PDS_LOG(ERROR) << "step log: writing " << path_ << " failed: " << std::strerror(errno)
                   << "; no more steps are logged";
  }
}

}  // namespace pdserve
