#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>

#include <sys/syscall.h>
#include <unistd.h>

#include "common/check.h"

namespace pdserve {
namespace {
std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

const char* Basename(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

// Writes one whole line with a single write(2) so lines from threads and
// processes sharing a terminal do not interleave.
void WriteLine(const std::string& line) {
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

std::string Prefix(char level, const char* file, int line) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm tm_utc;
  gmtime_r(&ts.tv_sec, &tm_utc);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%c%02d%02d %02d:%02d:%02d.%06ld %ld %s:%d] ", level,
                tm_utc.tm_mon + 1, tm_utc.tm_mday, tm_utc.tm_hour, tm_utc.tm_min, tm_utc.tm_sec,
                ts.tv_nsec / 1000, static_cast<long>(::syscall(SYS_gettid)), Basename(file), line);
  return buf;
}
}  // namespace

void SetMinLogLevel(LogLevel level) { g_min_level.store(static_cast<int>(level)); }
LogLevel MinLogLevel() { return static_cast<LogLevel>(g_min_level.load(std::memory_order_relaxed)); }

bool ParseLogLevel(const char* text, LogLevel* level) {
  static constexpr struct {
    const char* name;
    LogLevel level;
  } kLevels[] = {{"debug", LogLevel::kDebug},
                 {"info", LogLevel::kInfo},
                 {"warning", LogLevel::kWarning},
                 {"error", LogLevel::kError}};
  for (const auto& l : kLevels) {
    if (std::strcmp(text, l.name) == 0) {
      *level = l.level;
      return true;
    }
  }
  return false;
}

namespace internal {
LogMessage::LogMessage(LogLevel level, const char* file, int line) : level_(level) {
  static constexpr char kLetters[] = {'D', 'I', 'W', 'E'};
  stream_ << Prefix(kLetters[static_cast<int>(level)], file, line);
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  WriteLine(stream_.str());
}

CheckFailure::CheckFailure(const char* file, int line, const char* condition) {
  stream_ << Prefix('F', file, line) << "Check failed: " << condition << " ";
}

CheckFailure::~CheckFailure() {
  stream_ << '\n';
  WriteLine(stream_.str());
  std::abort();
}
}  // namespace internal
}  // namespace pdserve
