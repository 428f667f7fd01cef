#include "tracing/metrics.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "tracing/prometheus_text.h"

namespace pdserve::tracing {

void Counter::Increment(double amount) {
  PDS_DCHECK(amount >= 0) << "counters only go up: " << amount;
  value_.fetch_add(amount, std::memory_order_relaxed);
}

double Gauge::value() const {
  if (has_callback_.load(std::memory_order_acquire)) {
    absl::MutexLock lock(&callback_mu_);
    if (callback_) return callback_();
  }
  return value_.load(std::memory_order_relaxed);
}

void Gauge::SetCallback(std::function<double()> callback) {
  std::function<double()> old;  // Destroyed outside the lock.
  absl::MutexLock lock(&callback_mu_);
  has_callback_.store(callback != nullptr, std::memory_order_release);
  old = std::exchange(callback_, std::move(callback));
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  // First bound >= value: buckets are "less than or equal".
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot snapshot;
  snapshot.bounds = bounds_;
  snapshot.cumulative_counts.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative_counts[i] = running;
  }
  snapshot.count = running;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

std::vector<double> LinearBuckets(double start, double width, int count) {
  std::vector<double> bounds;
  for (int i = 0; i < count; ++i) bounds.push_back(start + width * i);
  return bounds;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> bounds;
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds.push_back(bound);
  return bounds;
}

template <typename T>
MetricFamily<T>::MetricFamily(std::string name, std::string help, MetricType type,
                              std::vector<std::string> label_names, std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      bounds_(std::move(bounds)) {}

template <typename T>
T* MetricFamily<T>::Labels(const std::vector<std::string>& label_values) {
  PDS_CHECK_EQ(label_values.size(), label_names_.size())
      << "metric " << name_ << " takes labels {" << absl::StrJoin(label_names_, ",") << "}, got {"
      << absl::StrJoin(label_values, ",") << "}";
  absl::MutexLock lock(&mu_);
  std::unique_ptr<T>& child = children_[label_values];
  if (child == nullptr) {
    if constexpr (std::is_same_v<T, Histogram>) {
      child = std::make_unique<Histogram>(bounds_);
    } else {
      child = std::make_unique<T>();
    }
  }
  return child.get();
}

template <typename T>
std::vector<std::pair<std::vector<std::string>, const T*>> MetricFamily<T>::Children() const {
  std::vector<std::pair<std::vector<std::string>, const T*>> children;
  absl::MutexLock lock(&mu_);
  children.reserve(children_.size());
  for (const auto& [labels, child] : children_) children.emplace_back(labels, child.get());
  return children;
}

template class MetricFamily<Counter>;
template class MetricFamily<Gauge>;
template class MetricFamily<Histogram>;

namespace {

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// "{a="x",b="y"}", with `extra` (already escaped) appended; "" when empty.
std::string FormatLabels(const std::vector<std::string>& names,
                         const std::vector<std::string>& values, std::string_view extra_name = {},
                         std::string_view extra_value = {}) {
  if (names.empty() && extra_name.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    absl::StrAppend(&out, names[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  if (!extra_name.empty()) {
    if (!names.empty()) out += ',';
    out.append(extra_name).append("=\"").append(extra_value).append("\"");
  }
  out += '}';
  return out;
}

void AppendSample(std::string* out, std::string_view name, std::string_view labels, double value) {
  out->append(name).append(labels).append(" ").append(FormatPrometheusValue(value)).append("\n");
}

template <typename T>
void RenderFamily(const MetricFamily<T>& family, std::string* out) {
  const auto children = family.Children();
  if (children.empty()) return;
  absl::StrAppend(out, "# HELP ", family.name(), " ", EscapeHelp(family.help()), "\n");
  absl::StrAppend(out, "# TYPE ", family.name(), " ", TypeName(family.type()), "\n");
  const auto& names = family.label_names();
  for (const auto& [values, child] : children) {
    if constexpr (std::is_same_v<T, Histogram>) {
      const Histogram::Snapshot snapshot = child->snapshot();
      const std::string bucket_name = absl::StrCat(family.name(), "_bucket");
      for (size_t i = 0; i <= snapshot.bounds.size(); ++i) {
        const std::string le = i < snapshot.bounds.size()
                                   ? FormatPrometheusValue(snapshot.bounds[i])
                                   : std::string("+Inf");
        AppendSample(out, bucket_name, FormatLabels(names, values, "le", le),
                     static_cast<double>(snapshot.cumulative_counts[i]));
      }
      const std::string labels = FormatLabels(names, values);
      AppendSample(out, absl::StrCat(family.name(), "_sum"), labels, snapshot.sum);
      AppendSample(out, absl::StrCat(family.name(), "_count"), labels,
                   static_cast<double>(snapshot.count));
    } else {
      AppendSample(out, family.name(), FormatLabels(names, values), child->value());
    }
  }
}

}  // namespace

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

absl::StatusOr<CounterFamily*> MetricsRegistry::AddCounter(std::string name, std::string help,
                                                           std::vector<std::string> label_names) {
  return Add<Counter>(std::move(name), std::move(help), MetricType::kCounter,
                      std::move(label_names), {});
}

absl::StatusOr<GaugeFamily*> MetricsRegistry::AddGauge(std::string name, std::string help,
                                                       std::vector<std::string> label_names) {
  return Add<Gauge>(std::move(name), std::move(help), MetricType::kGauge, std::move(label_names),
                    {});
}

absl::StatusOr<HistogramFamily*> MetricsRegistry::AddHistogram(
    std::string name, std::string help, std::vector<double> bounds,
    std::vector<std::string> label_names) {
  if (bounds.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("histogram ", name, " needs buckets"));
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "histogram ", name, " buckets must be finite and strictly increasing; bucket ", i, " is ",
          FormatPrometheusValue(bounds[i])));
    }
  }
  for (const std::string& label : label_names) {
    if (label == "le") {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, " may not use the label name 'le'"));
    }
  }
  return Add<Histogram>(std::move(name), std::move(help), MetricType::kHistogram,
                        std::move(label_names), std::move(bounds));
}

template <typename T>
absl::StatusOr<MetricFamily<T>*> MetricsRegistry::Add(std::string name, std::string help,
                                                      MetricType type,
                                                      std::vector<std::string> label_names,
                                                      std::vector<double> bounds) {
  if (!IsValidMetricName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid metric name '", name, "'"));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    if (!IsValidLabelName(label_names[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", name, ": invalid label name '", label_names[i], "'"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (label_names[j] == label_names[i]) {
        return absl::InvalidArgumentError(
            absl::StrCat("metric ", name, ": duplicate label '", label_names[i], "'"));
      }
    }
  }

  absl::MutexLock lock(&mu_);
  if (auto it = index_.find(name); it != index_.end()) {
    auto* existing = std::get_if<std::unique_ptr<MetricFamily<T>>>(&families_[it->second]);
    if (existing != nullptr && (*existing)->type() == type && (*existing)->help() == help &&
        (*existing)->label_names() == label_names && (*existing)->bounds() == bounds) {
      return existing->get();
    }
    return absl::AlreadyExistsError(absl::StrCat(
        "metric ", name, " is already registered with another type, help, labels or buckets"));
  }
  std::vector<std::string> samples = {name};
  if (type == MetricType::kHistogram) {
    samples = {absl::StrCat(name, "_bucket"), absl::StrCat(name, "_sum"),
               absl::StrCat(name, "_count")};
  }
  for (const std::string& sample : samples) {
    if (sample_names_.contains(sample)) {
      return absl::AlreadyExistsError(
          absl::StrCat("metric ", name, ": sample name ", sample, " is taken by another metric"));
    }
  }
  sample_names_.insert(samples.begin(), samples.end());

  auto family = std::make_unique<MetricFamily<T>>(std::move(name), std::move(help), type,
                                                  std::move(label_names), std::move(bounds));
  MetricFamily<T>* raw = family.get();
  if (raw->label_names().empty()) raw->Get();
  index_.emplace(raw->name(), families_.size());
  families_.emplace_back(std::move(family));
  return raw;
}

std::string MetricsRegistry::RenderText() const {
  // Families are never removed, so the pointers outlive the lock; rendering
  // without it keeps gauge callbacks from running under our mutex.
  std::vector<const AnyFamily*> families;
  {
    absl::MutexLock lock(&mu_);
    families.reserve(families_.size());
    for (const AnyFamily& family : families_) families.push_back(&family);
  }
  std::string out;
  for (const AnyFamily* family : families) {
    std::visit([&](const auto& typed) { RenderFamily(*typed, &out); }, *family);
  }
  return out;
}

}  // namespace pdserve::tracing
