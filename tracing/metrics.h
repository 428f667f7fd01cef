// Prometheus-style metrics: counters, gauges and fixed-bucket histograms with
// labels, rendered in the text exposition format 0.0.4. No HTTP here; see
// tracing/metrics_handler.h for the /metrics route.
//
// Hot path: look a labelled child up once (it locks), keep the pointer, then
// every update is a relaxed atomic. Children live as long as the registry.
//
//   MetricsRegistry registry;
//   auto errors = registry.AddCounter("pdserve:request_errors_total",
//                                     "Failed requests by kind.", {"kind"});
//   Counter* deadline = (*errors)->Labels({"deadline"});
//   deadline->Increment();
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace pdserve::tracing {

// Monotonically increasing; `amount` must be >= 0.
class Counter {
 public:
  void Increment(double amount = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down, or is read from a callback at scrape time
// (e.g. KV cache usage owned by the cache manager).
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta) { value_.fetch_add(delta, std::memory_order_relaxed); }
  // The callback's result when one is set, else the stored value.
  double value() const;
  // Makes value() call `callback`; nullptr goes back to the stored value.
  // Once this returns, an earlier callback is neither running nor called
  // again, so its owner may be destroyed.
  void SetCallback(std::function<double()> callback);

 private:
  std::atomic<double> value_{0.0};
  std::atomic<bool> has_callback_{false};  // Skips the mutex for plain gauges.
  mutable absl::Mutex callback_mu_;
  std::function<double()> callback_ ABSL_GUARDED_BY(callback_mu_);
};

// Counts observations into fixed buckets, Prometheus style: bucket i counts
// values <= bounds[i]; a final +Inf bucket counts everything. NaN is ignored.
class Histogram {
 public:
  // `bounds` must be finite and strictly increasing (checked by the registry).
  explicit Histogram(std::vector<double> bounds);

  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;
    // Cumulative counts for each bound, then +Inf (== count).
    std::vector<uint64_t> cumulative_counts;
    double sum = 0.0;
    uint64_t count = 0;
  };
  // Concurrent observations may land partly in a snapshot: counts stay
  // cumulative and consistent with each other; sum may lag by one value.
  Snapshot snapshot() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  // Per-bucket (not cumulative) counts; the last is the +Inf bucket.
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0.0};
};

// `count` bounds start, start + width, ...
std::vector<double> LinearBuckets(double start, double width, int count);
// `count` bounds start, start * factor, ...
std::vector<double> ExponentialBuckets(double start, double factor, int count);

enum class MetricType { kCounter, kGauge, kHistogram };

// All children of one metric name, one per set of label values.
template <typename T>
class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, MetricType type,
               std::vector<std::string> label_names, std::vector<double> bounds);

  // The child for `label_values` (one per label name, in order), created on
  // first use. Locks: cache the pointer on hot paths.
  T* Labels(const std::vector<std::string>& label_values);
  // The child of a family without labels.
  T* Get() { return Labels({}); }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  MetricType type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  const std::vector<double>& bounds() const { return bounds_; }

  // Children sorted by label values; pointers stay valid for the family's life.
  std::vector<std::pair<std::vector<std::string>, const T*>> Children() const;

 private:
  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // Histograms only.
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = MetricFamily<Counter>;
using GaugeFamily = MetricFamily<Gauge>;
using HistogramFamily = MetricFamily<Histogram>;

// Thread-safe. Registering the same name again with the same type, help,
// labels (and buckets) returns the existing family, so components that share
// a process share metrics; any difference is ALREADY_EXISTS. Bad names or
// buckets are INVALID_ARGUMENT. Families without labels start with their one
// child, so they are exposed (as 0) before the first update.
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  absl::StatusOr<CounterFamily*> AddCounter(std::string name, std::string help,
                                            std::vector<std::string> label_names = {});
  absl::StatusOr<GaugeFamily*> AddGauge(std::string name, std::string help,
                                        std::vector<std::string> label_names = {});
  absl::StatusOr<HistogramFamily*> AddHistogram(std::string name, std::string help,
                                                std::vector<double> bounds,
                                                std::vector<std::string> label_names = {});

  // The Prometheus text exposition format, version 0.0.4: families in
  // registration order, children sorted by label values, families without
  // children left out. Gauge callbacks run here, with no registry lock held.
  std::string RenderText() const;

 private:
  using AnyFamily = std::variant<std::unique_ptr<CounterFamily>, std::unique_ptr<GaugeFamily>,
                                 std::unique_ptr<HistogramFamily>>;

  template <typename T>
  absl::StatusOr<MetricFamily<T>*> Add(std::string name, std::string help, MetricType type,
                                       std::vector<std::string> label_names,
                                       std::vector<double> bounds);

  mutable absl::Mutex mu_;
  // A deque: RenderText keeps pointers to elements while others register.
  std::deque<AnyFamily> families_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, size_t> index_ ABSL_GUARDED_BY(mu_);
  // Every sample name in use, histogram _bucket/_sum/_count included.
  absl::flat_hash_set<std::string> sample_names_ ABSL_GUARDED_BY(mu_);
};

// The Content-Type of RenderText()'s output.
inline constexpr char kPrometheusTextContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace pdserve::tracing
