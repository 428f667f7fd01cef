// Minimal leveled logging to stderr: `PDS_LOG(INFO) << "text";`.
// One line per message, prefixed with level, time, thread and source.
#pragma once

#include <sstream>

namespace pdserve {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Messages below this level are dropped. Set once from flags in main().
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "debug", "info", "warning", "error"; false when unknown.
bool ParseLogLevel(const char* text, LogLevel* level);

namespace internal {
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal
}  // namespace pdserve

#define PDS_LOG_LEVEL_DEBUG ::pdserve::LogLevel::kDebug
#define PDS_LOG_LEVEL_INFO ::pdserve::LogLevel::kInfo
#define PDS_LOG_LEVEL_WARNING ::pdserve::LogLevel::kWarning
#define PDS_LOG_LEVEL_ERROR ::pdserve::LogLevel::kError

#define PDS_LOG(level)                                    \
  if (PDS_LOG_LEVEL_##level < ::pdserve::MinLogLevel()) { \
  } else                                                  \
    ::pdserve::internal::LogMessage(PDS_LOG_LEVEL_##level, __FILE__, __LINE__).stream()
