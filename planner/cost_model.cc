#include "planner/cost_model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace pdserve::planner {
namespace {

constexpr int kTerms = 5;
const std::array<const char*, kTerms> kTermNames = {"base_s", "prefill_token_s", "attention_pair_s",
                                                    "decode_seq_s", "decode_context_token_s"};

std::array<double, kTerms> Features(const StepShape& s) {
  return {1.0, static_cast<double>(s.prefill_tokens), s.attention_pairs,
          static_cast<double>(s.decode_seqs), static_cast<double>(s.decode_context)};
}

StepCost FromCoefficients(const std::array<double, kTerms>& c) {
  return StepCost{c[0], c[1], c[2], c[3], c[4]};
}

std::array<double, kTerms> ToCoefficients(const StepCost& s) {
  return {s.base_s, s.prefill_token_s, s.attention_pair_s, s.decode_seq_s,
          s.decode_context_token_s};
}

// Solves the n x n system a x = b in place (partial pivoting); false when
// singular.
bool Solve(std::vector<std::vector<double>>& a, std::vector<double>& b, std::vector<double>* x) {
  const size_t n = b.size();
  for (size_t col = 0; col < n; ++col) {
    size_t pivot = col;
    for (size_t r = col + 1; r < n; ++r) {
      if (std::abs(a[r][col]) > std::abs(a[pivot][col])) pivot = r;
    }
    if (std::abs(a[pivot][col]) < 1e-12) return false;
    std::swap(a[col], a[pivot]);
    std::swap(b[col], b[pivot]);
    for (size_t r = col + 1; r < n; ++r) {
      const double f = a[r][col] / a[col][col];
      for (size_t k = col; k < n; ++k) a[r][k] -= f * a[col][k];
      b[r] -= f * b[col];
    }
  }
  x->assign(n, 0.0);
  for (size_t i = n; i-- > 0;) {
    double s = b[i];
    for (size_t k = i + 1; k < n; ++k) s -= a[i][k] * (*x)[k];
    (*x)[i] = s / a[i][i];
  }
  return true;
}

absl::Status CheckNonNegative(double v, absl::string_view name) {
  if (!std::isfinite(v) || v < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile: ", name, " must be finite and >= 0, got ", v));
  }
  return absl::OkStatus();
}

absl::Status CheckStepCost(const StepCost& step, absl::string_view prefix) {
  for (int i = 0; i < kTerms; ++i) {
    if (absl::Status s =
            CheckNonNegative(ToCoefficients(step)[i], absl::StrCat(prefix, kTermNames[i]));
        !s.ok())
      return s;
  }
  return absl::OkStatus();
}

nlohmann::ordered_json StepCostToJson(const StepCost& step) {
  nlohmann::ordered_json j;
  const auto c = ToCoefficients(step);
  for (int i = 0; i < kTerms; ++i) j[kTermNames[i]] = c[i];
  return j;
}

template <typename T>
absl::Status Read(const nlohmann::json& j, const char* key, T* out, bool required) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("profile: missing \"", key, "\""));
    return absl::OkStatus();
  }
  try {
    *out = it->get<T>();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile: \"", key, "\" has the wrong type: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

double ChunkAttentionPairs(int64_t n_past, int64_t n_new) {
  const double p = static_cast<double>(n_past), n = static_cast<double>(n_new);
  return n * p + n * (n + 1) / 2;
}

double StepCost::Seconds(const StepShape& s) const {
  const std::array<double, kTerms> f = Features(s);
  const std::array<double, kTerms> c = ToCoefficients(*this);
  double t = 0;
  for (int i = 0; i < kTerms; ++i) t += f[i] * c[i];
  return t;
}

double CoRunSlowdown(const DeviceProfile& profile, const StepShape& shape) {
  if (!profile.step_co_run.has_value()) return 1.0;
  const double alone = profile.step.Seconds(shape);
  const double co = profile.step_co_run->Seconds(shape);
  if (!(alone > 0) || !(co > alone)) return 1.0;
  return co / alone;
}

double PostPrefillCost::ExtraSeconds(double since_s, int32_t decode_seqs) const {
  if (!(excess_s > 0) || !(decay_s > 0) || decode_seqs > max_decode_seqs) return 0.0;
  return excess_s * std::exp(-std::max(0.0, since_s) / decay_s);
}

namespace {

// Least squares of extra = a * exp(-since / decay) over a log grid of decays;
// a >= 0. Returns the sum of squared residuals. The decay stops at the
// window the samples span (their largest since_s): within it a fade slower
// than the window and a machine that ran slower over the whole window (a
// VM's drift between the steady and the post-prefill steps) look alike, and
// a fit free to choose the former charged a 2 ms extra fading over 5 s
// after every prompt from a 0.2 s window (docs/performance.md, run C).
double FitDecay(const std::vector<const PostPrefillSample*>& xs, double* a, double* decay) {
  double best_sse = std::numeric_limits<double>::infinity();
  double window_s = 0;
  for (const PostPrefillSample* x : xs) window_s = std::max(window_s, x->since_s);
  constexpr int kGrid = 161;  // 1 ms .. 10 s, 40 points per decade
  for (int g = 0; g < kGrid; ++g) {
    const double d = 1e-3 * std::pow(10.0, g / 40.0);
    if (g > 0 && d > window_s) break;
    double re = 0, ee = 0;
    for (const PostPrefillSample* x : xs) {
      const double e = std::exp(-std::max(0.0, x->since_s) / d);
      re += (x->seconds - x->steady_s) * e;
      ee += e * e;
    }
    const double amp = ee > 0 ? std::max(0.0, re / ee) : 0.0;
    double sse = 0;
    for (const PostPrefillSample* x : xs) {
      const double r = x->seconds - x->steady_s - amp * std::exp(-std::max(0.0, x->since_s) / d);
      sse += r * r;
    }
    if (sse < best_sse) {
      best_sse = sse;
      *a = amp;
      *decay = d;
    }
  }
  return best_sse;
}

}  // namespace

absl::StatusOr<PostPrefillCost> FitPostPrefillCost(const std::vector<PostPrefillSample>& samples) {
  if (samples.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("fit: need 2 or more steps timed after a prefill; got ", samples.size()));
  }
  std::map<int32_t, std::vector<const PostPrefillSample*>> by_batch;
  for (const PostPrefillSample& s : samples) {
    if (!std::isfinite(s.seconds) || s.seconds <= 0 || !std::isfinite(s.since_s) ||
        !std::isfinite(s.steady_s) || s.steady_s <= 0 || s.shape.decode_seqs < 1 ||
        s.shape.prefill_tokens != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("fit: a decode step after a prefill took ", s.seconds, " s at ", s.since_s,
                       " s (steady ", s.steady_s, " s, ", s.shape.decode_seqs, " sequences, ",
                       s.shape.prefill_tokens, " prompt tokens)"));
    }
    by_batch[s.shape.decode_seqs].push_back(&s);
  }
  PostPrefillCost cost;
  std::vector<const PostPrefillSample*> included;
  for (const auto& [batch, xs] : by_batch) {
    double a = 0, decay = 1, steady = 0;
    FitDecay(xs, &a, &decay);
    for (const PostPrefillSample* x : xs) steady += x->steady_s / static_cast<double>(xs.size());
    if (!(a >= 0.1 * steady)) break;
    cost.max_decode_seqs = batch;
    included.insert(included.end(), xs.begin(), xs.end());
  }
  if (!included.empty()) FitDecay(included, &cost.excess_s, &cost.decay_s);
  return cost;
}

absl::StatusOr<StepCost> FitStepCost(const std::vector<StepSample>& samples) {
  bool has_prefill = false, has_decode = false;
  for (const StepSample& s : samples) {
    if (!std::isfinite(s.seconds) || s.seconds <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("fit: a step took ", s.seconds, " s"));
    }
    has_prefill |= s.shape.prefill_tokens > 0;
    has_decode |= s.shape.decode_seqs > 0;
  }
  if (samples.size() < kTerms || !has_prefill || !has_decode) {
    return absl::InvalidArgumentError(absl::StrCat("fit: need at least ", kTerms,
                                                   " steps, prefill and decode among them; got ",
                                                   samples.size()));
  }
  // Columns scaled to unit norm so the normal equations stay well conditioned
  // (attention pairs run to 1e6 where the base column is 1).
  std::array<double, kTerms> scale{};
  for (const StepSample& s : samples) {
    const auto f = Features(s.shape);
    for (int i = 0; i < kTerms; ++i) scale[i] += f[i] * f[i];
  }
  std::vector<int> active;
  for (int i = 0; i < kTerms; ++i) {
    scale[i] = std::sqrt(scale[i]);
    if (scale[i] > 0) active.push_back(i);
  }
  // Relative error is what matters (a 1 ms decode step and a 1 s prefill
  // should be fitted equally well), so each row is weighted by 1/seconds.
  std::array<double, kTerms> coef{};
  while (!active.empty()) {
    const size_t n = active.size();
    std::vector<std::vector<double>> ata(n, std::vector<double>(n, 0.0));
    std::vector<double> atb(n, 0.0);
    for (const StepSample& s : samples) {
      const auto f = Features(s.shape);
      const double w = 1.0 / s.seconds;
      for (size_t i = 0; i < n; ++i) {
        const double fi = f[active[i]] / scale[active[i]] * w;
        atb[i] += fi * s.seconds * w;
        for (size_t k = 0; k < n; ++k) ata[i][k] += fi * f[active[k]] / scale[active[k]] * w;
      }
    }
    std::vector<double> x;
    if (!Solve(ata, atb, &x)) {
      return absl::InvalidArgumentError(
          "fit: the measured steps do not separate the cost terms (vary tokens, batch and "
          "context)");
    }
    size_t worst = n;
    for (size_t i = 0; i < n; ++i) {
      if (x[i] < 0 && (worst == n || x[i] < x[worst])) worst = i;
    }
    if (worst == n) {
      coef.fill(0.0);
      for (size_t i = 0; i < n; ++i) coef[active[i]] = x[i] / scale[active[i]];
      return FromCoefficients(coef);
    }
    active.erase(active.begin() + static_cast<std::ptrdiff_t>(worst));
  }
  return absl::InvalidArgumentError("fit: no non-negative cost model fits the steps");
}

absl::Status DeviceProfile::Validate() const {
  if (n_layers < 1) return absl::InvalidArgumentError("profile: n_layers must be >= 1");
  if (kv_bytes_per_token < 1)
    return absl::InvalidArgumentError("profile: kv_bytes_per_token must be >= 1");
  if (block_size < 1) return absl::InvalidArgumentError("profile: block_size must be >= 1");
  if (kv_blocks < 1) return absl::InvalidArgumentError("profile: kv_blocks must be >= 1");
  if (max_batch_tokens < 1)
    return absl::InvalidArgumentError("profile: max_batch_tokens must be >= 1");
  if (max_batch_seqs < 1) return absl::InvalidArgumentError("profile: max_batch_seqs must be >= 1");
  if (absl::Status s = CheckStepCost(step, ""); !s.ok()) return s;
  if (step_co_run.has_value()) {
    if (absl::Status s = CheckStepCost(*step_co_run, "step_co_run."); !s.ok()) return s;
  }
  for (const auto& [cost, name] : {std::pair{&post_prefill, "post_prefill"},
                                   std::pair{&post_peer_prefill, "post_peer_prefill"}}) {
    if (!cost->has_value()) continue;
    if (absl::Status s = CheckNonNegative((*cost)->excess_s, absl::StrCat(name, ".excess_s"));
        !s.ok())
      return s;
    if ((*cost)->max_decode_seqs < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("profile: ", name, ".max_decode_seqs must be >= 0"));
    }
    if (!((*cost)->decay_s > 0) || !std::isfinite((*cost)->decay_s)) {
      return absl::InvalidArgumentError(absl::StrCat("profile: ", name, ".decay_s must be > 0"));
    }
  }
  // Every non-empty step must take time, or the simulation would not advance.
  if (!(step.base_s > 0 || (step.prefill_token_s > 0 && step.decode_seq_s > 0))) {
    return absl::InvalidArgumentError(
        "profile: step.base_s, or both prefill_token_s and decode_seq_s, must be > 0");
  }
  if (!(link.bandwidth_bytes_per_s > 0) || !std::isfinite(link.bandwidth_bytes_per_s)) {
    return absl::InvalidArgumentError("profile: link.bandwidth_bytes_per_s must be > 0");
  }
  if (absl::Status s = CheckNonNegative(link.latency_s, "link.latency_s"); !s.ok()) return s;
  return CheckNonNegative(router_overhead_s, "router_overhead_s");
}

nlohmann::ordered_json ProfileToJson(const DeviceProfile& p) {
  nlohmann::ordered_json j;
  j["name"] = p.name;
  j["source"] = p.source;
  j["model"] = p.model;
  j["threads"] = p.threads;
  j["n_layers"] = p.n_layers;
  j["kv_bytes_per_token"] = p.kv_bytes_per_token;
  j["block_size"] = p.block_size;
  j["kv_blocks"] = p.kv_blocks;
  j["max_batch_tokens"] = p.max_batch_tokens;
  j["max_batch_seqs"] = p.max_batch_seqs;
  j["step"] = StepCostToJson(p.step);
  if (p.step_co_run.has_value()) {
    j["step_co_run"] = StepCostToJson(*p.step_co_run);
    j["co_run_source"] = p.co_run_source;
  }
  for (const auto& [cost, source, name] :
       {std::tuple{&p.post_prefill, &p.post_prefill_source, "post_prefill"},
        std::tuple{&p.post_peer_prefill, &p.post_peer_prefill_source, "post_peer_prefill"}}) {
    if (!cost->has_value()) continue;
    j[name] = {{"excess_s", (*cost)->excess_s},
               {"decay_s", (*cost)->decay_s},
               {"max_decode_seqs", (*cost)->max_decode_seqs}};
    j[absl::StrCat(name, "_source")] = *source;
  }
  j["link"] = {{"bandwidth_bytes_per_s", p.link.bandwidth_bytes_per_s},
               {"latency_s", p.link.latency_s}};
  j["router_overhead_s"] = p.router_overhead_s;
  j["notes"] = nlohmann::ordered_json::parse(p.notes.dump());
  return j;
}

absl::StatusOr<DeviceProfile> ProfileFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("profile: not a JSON object");
  DeviceProfile p;
  absl::Status st;
  auto read = [&](auto status) {
    if (st.ok() && !status.ok()) st = status;
  };
  read(Read(j, "name", &p.name, false));
  read(Read(j, "source", &p.source, false));
  read(Read(j, "model", &p.model, false));
  read(Read(j, "threads", &p.threads, false));
  read(Read(j, "n_layers", &p.n_layers, true));
  read(Read(j, "kv_bytes_per_token", &p.kv_bytes_per_token, true));
  read(Read(j, "block_size", &p.block_size, false));
  read(Read(j, "kv_blocks", &p.kv_blocks, true));
  read(Read(j, "max_batch_tokens", &p.max_batch_tokens, false));
  read(Read(j, "max_batch_seqs", &p.max_batch_seqs, false));
  read(Read(j, "router_overhead_s", &p.router_overhead_s, false));
  if (!st.ok()) return st;
  auto step = j.find("step");
  if (step == j.end() || !step->is_object())
    return absl::InvalidArgumentError("profile: missing \"step\" object");
  std::array<double, kTerms> c{};
  for (int i = 0; i < kTerms; ++i) read(Read(*step, kTermNames[i], &c[i], i == 0));
  p.step = FromCoefficients(c);
  if (auto co = j.find("step_co_run"); co != j.end()) {
    if (!co->is_object())
      return absl::InvalidArgumentError("profile: \"step_co_run\" must be an object");
    std::array<double, kTerms> cc{};
    for (int i = 0; i < kTerms; ++i) read(Read(*co, kTermNames[i], &cc[i], i == 0));
    p.step_co_run = FromCoefficients(cc);
    read(Read(j, "co_run_source", &p.co_run_source, false));
  }
  for (const auto& [cost, source, name] :
       {std::tuple{&p.post_prefill, &p.post_prefill_source, "post_prefill"},
        std::tuple{&p.post_peer_prefill, &p.post_peer_prefill_source, "post_peer_prefill"}}) {
    auto pp = j.find(name);
    if (pp == j.end()) continue;
    if (!pp->is_object())
      return absl::InvalidArgumentError(absl::StrCat("profile: \"", name, "\" must be an object"));
    PostPrefillCost c;
    read(Read(*pp, "excess_s", &c.excess_s, true));
    read(Read(*pp, "decay_s", &c.decay_s, true));
    read(Read(*pp, "max_decode_seqs", &c.max_decode_seqs, true));
    *cost = c;
    read(Read(j, absl::StrCat(name, "_source").c_str(), source, false));
  }
  if (auto link = j.find("link"); link != j.end()) {
    if (!link->is_object())
      return absl::InvalidArgumentError("profile: \"link\" must be an object");
    read(Read(*link, "bandwidth_bytes_per_s", &p.link.bandwidth_bytes_per_s, true));
    read(Read(*link, "latency_s", &p.link.latency_s, false));
  }
  if (!st.ok()) return st;
  if (auto notes = j.find("notes"); notes != j.end()) p.notes = *notes;
  if (absl::Status v = p.Validate(); !v.ok()) return v;
  return p;
}

absl::StatusOr<DeviceProfile> LoadProfile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open profile ", path));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  absl::StatusOr<DeviceProfile> p = ProfileFromJson(j);
  if (!p.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", p.status().message()));
  return p;
}

absl::Status SaveProfile(const DeviceProfile& profile, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out << ProfileToJson(profile).dump(2) << "\n";
  if (!out) return absl::DataLossError(absl::StrCat("write failed: ", path));
  return absl::OkStatus();
}

}  // namespace pdserve::planner
