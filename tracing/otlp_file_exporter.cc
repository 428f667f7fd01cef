#include "tracing/otlp_file_exporter.h"

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace pdserve::tracing {

absl::StatusOr<std::unique_ptr<OtlpFileExporter>> OtlpFileExporter::Open(
    OtlpFileExporterOptions options) {
  if (options.max_queued_spans == 0 || options.max_spans_per_line == 0) {
    return absl::InvalidArgumentError("span exporter queue and line sizes must be positive");
  }
  std::FILE* file = std::fopen(options.path.c_str(), "a");
  if (file == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot open span file ", options.path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<OtlpFileExporter>(new OtlpFileExporter(std::move(options), file));
}

OtlpFileExporter::OtlpFileExporter(OtlpFileExporterOptions options, std::FILE* file)
    : options_(std::move(options)), file_(file) {
  writer_ = std::thread([this] { Run(); });
}

OtlpFileExporter::~OtlpFileExporter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  writer_.join();
  std::fclose(file_);
}

bool OtlpFileExporter::Export(Span span) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_ && queue_.size() < options_.max_queued_spans) {
      queue_.push_back(std::move(span));
      ++enqueued_;
      return true;
    }
    ++dropped_;
  }
  if (options_.dropped_spans != nullptr) options_.dropped_spans->Increment();
  return false;
}

void OtlpFileExporter::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t target = enqueued_;
  auto written_all = [this, target]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ >= target; };
  mu_.Await(absl::Condition(&written_all));
}

uint64_t OtlpFileExporter::dropped_spans() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

uint64_t OtlpFileExporter::written_spans() const {
  absl::MutexLock lock(&mu_);
  return written_;
}

void OtlpFileExporter::Run() {
  auto has_work = [this]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
  for (;;) {
    std::vector<Span> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&has_work));
      if (queue_.empty()) return;  // Stopping and drained.
      const size_t n = std::min(queue_.size(), options_.max_spans_per_line);
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    // Encode and write without the lock: Export stays a short critical section.
    std::string line = EncodeOtlpJson(batch, options_.resource);
    line += '\n';
    const bool ok =
        std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
    absl::MutexLock lock(&mu_);
    done_ += batch.size();
    if (ok) {
      written_ += batch.size();
    } else {
      dropped_ += batch.size();
      if (!write_failed_) {
        write_failed_ = true;
        PDS_LOG(ERROR) << "tracing: writing spans to " << options_.path
                       << " failed: " << std::strerror(errno) << " (further failures not logged)";
      }
    }
  }
}

}  // namespace pdserve::tracing
