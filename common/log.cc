#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <string>
#include <string_view>

#include <sys/syscall.h>
#include <unistd.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/log_escape.h"

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

// Appends `c` as \xNN.
void AppendHex(unsigned char c, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->append("\\x");
  out->push_back(kHex[c >> 4]);
  out->push_back(kHex[c & 15]);
}
}  // namespace

std::string EscapeLogText(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      out.append("\\n");
    } else if (c == '\r') {
      out.append("\\r");
    } else if (c == '\t') {
      out.push_back('\t');
    } else if (c < 0x20 || c == 0x7f) {
      AppendHex(c, &out);  // ESC, BEL, backspace...: terminal control
    } else if (c == 0xc2 && i + 1 < text.size() &&
               static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
      // U+0080..U+009F, the C1 controls (U+009B is a one-character CSI).
      AppendHex(c, &out);
      AppendHex(static_cast<unsigned char>(text[++i]), &out);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::string LogQuote(std::string_view text, size_t max_bytes) {
  const std::string_view kept = text.substr(0, max_bytes);
  return absl::StrCat("\"", absl::CHexEscape(absl::string_view(kept.data(), kept.size())),
                      text.size() > max_bytes ? "...\"" : "\"");
}

namespace {
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
LogLevel MinLogLevel() {
  return static_cast<LogLevel>(g_min_level.load(std::memory_order_relaxed));
}

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
  // Messages quote what clients and peers send (ids, names, headers): one
  // message stays one line, and no byte of it can drive the terminal.
  std::string line = EscapeLogText(stream_.str());
  line += '\n';
  WriteLine(line);
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
