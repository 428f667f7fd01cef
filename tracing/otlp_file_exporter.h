// Exports finished spans as OTLP/JSON lines to a file (the format of the
// OpenTelemetry Collector's file exporter, so its file receiver and other
// OTLP tools read it back). A background thread does the writing; Export()
// never blocks the request path: when the bounded queue is full the span is
// dropped and counted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tracing/metrics.h"
#include "tracing/span.h"

namespace pdserve::tracing {

// The seam request code depends on; tests and span-less builds use fakes.
class SpanExporter {
 public:
  virtual ~SpanExporter() = default;
  // Queues `span`; false when it was dropped. Never blocks.
  virtual bool Export(Span span) = 0;
};

struct OtlpFileExporterOptions {
  std::string path;  // Appended to; created when missing.
  OtlpResource resource;
  size_t max_queued_spans = 8192;
  size_t max_spans_per_line = 512;
  Counter* dropped_spans = nullptr;  // Optional metric, e.g. pdserve:spans_dropped_total.
};

class OtlpFileExporter final : public SpanExporter {
 public:
  // Opens the file (UNAVAILABLE when it cannot) and starts the writer thread.
  static absl::StatusOr<std::unique_ptr<OtlpFileExporter>> Open(OtlpFileExporterOptions options);
  // Writes what is queued, then stops.
  ~OtlpFileExporter() override;

  bool Export(Span span) override;
  // Blocks until every span queued before the call is written and flushed.
  void Flush();

  uint64_t dropped_spans() const;
  uint64_t written_spans() const;

 private:
  OtlpFileExporter(OtlpFileExporterOptions options, std::FILE* file);
  void Run();

  const OtlpFileExporterOptions options_;
  std::FILE* const file_;  // Owned; only the writer thread writes it.

  mutable absl::Mutex mu_;
  std::deque<Span> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;  // Accepted by Export, ever.
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;      // Written or failed, ever.
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;  // Logged once.
  std::thread writer_;
};

}  // namespace pdserve::tracing
