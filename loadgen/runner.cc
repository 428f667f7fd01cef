#include "loadgen/runner.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "loadgen/arrivals.h"

namespace pdserve::loadgen {
namespace {

// How long cancelled requests get to come back before the run gives up.
constexpr absl::Duration kCancelGrace = absl::Seconds(30);

// Shared with the transport callbacks, which may outlive an abandoned run.
struct Tracker {
  absl::Mutex mu;
  int in_flight ABSL_GUARDED_BY(mu) = 0;
  int sent ABSL_GUARDED_BY(mu) = 0;
  int finished ABSL_GUARDED_BY(mu) = 0;
  int failed ABSL_GUARDED_BY(mu) = 0;
  std::vector<std::optional<RequestOutcome>> outcomes ABSL_GUARDED_BY(mu);
};

// The two reasons a run stops early: its time bound and an interrupt
// (Ctrl-C). Waits poll the interrupt flag, which a signal thread sets.
struct Stopper {
  int64_t deadline_ns;
  const std::atomic<bool>* interrupted;

  bool now() const {
    return MonoNowNs() >= deadline_ns || (interrupted != nullptr && interrupted->load());
  }
  void SleepUntil(int64_t due_ns) const {
    while (!now() && MonoNowNs() < due_ns) {
      std::this_thread::sleep_for(
          std::chrono::nanoseconds(std::min<int64_t>(due_ns - MonoNowNs(), kPollNs)));
    }
  }
  // Waits (mu held) until `cond` holds (true) or the run must stop (false).
  bool Await(absl::Mutex* mu, const absl::Condition& cond) const {
    for (;;) {
      if (mu->AwaitWithTimeout(cond, absl::Nanoseconds(kPollNs))) return true;
      if (now()) return false;
    }
  }
  static constexpr int64_t kPollNs = 50 * 1000 * 1000;
};

void Send(LoadClient* client, const std::shared_ptr<Tracker>& tracker, RequestInput input,
          int slot) {
  {
    absl::MutexLock lock(&tracker->mu);
    ++tracker->in_flight;
    ++tracker->sent;
  }
  client->Send(input, [tracker, slot](RequestOutcome outcome) {
    absl::MutexLock lock(&tracker->mu);
    --tracker->in_flight;
    ++tracker->finished;
    if (!outcome.success) ++tracker->failed;
    if (slot >= 0) tracker->outcomes[slot] = std::move(outcome);
  });
}

bool Idle(Tracker* t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) { return t->in_flight == 0; }

// Prints "\r<label> sent a/b done c failed d in flight e  12.3 s" every
// half second until `stop`.
class ProgressLine {
 public:
  ProgressLine(std::shared_ptr<Tracker> tracker, int total, std::string label, bool enabled)
      : tracker_(std::move(tracker)), total_(total), label_(std::move(label)) {
    if (enabled) thread_ = std::thread([this] { Loop(); });
  }
  ~ProgressLine() {
    if (!thread_.joinable()) return;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
    Print();
    std::fputc('\n', stderr);
  }

 private:
  void Loop() {
    absl::MutexLock lock(&mu_);
    while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(500))) {
      mu_.Unlock();
      Print();
      mu_.Lock();
    }
  }
  void Print() {
    int sent, finished, failed, in_flight;
    {
      absl::MutexLock lock(&tracker_->mu);
      sent = tracker_->sent;
      finished = tracker_->finished;
      failed = tracker_->failed;
      in_flight = tracker_->in_flight;
    }
    std::fprintf(stderr, "\r%s sent %d/%d  done %d  failed %d  in flight %d  %.1f s   ",
                 label_.c_str(), sent, total_, finished - failed, failed, in_flight,
                 (MonoNowNs() - start_ns_) / 1e9);
    std::fflush(stderr);
  }

  std::shared_ptr<Tracker> tracker_;
  int total_;
  std::string label_;
  int64_t start_ns_ = MonoNowNs();
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Sends the warm-up requests (bounded like the run) and waits for them.
void WarmUp(LoadClient* client, const RunOptions& options) {
  const std::vector<RequestInput>& prompts = options.warmup_prompts;
  if (prompts.empty()) return;
  auto tracker = std::make_shared<Tracker>();
  const Stopper stop{MonoNowNs() + static_cast<int64_t>(options.max_duration_s * 1e9),
                     options.interrupted};
  for (size_t i = 0; i < prompts.size() && !stop.now(); ++i) {
    if (options.config.max_concurrency > 0) {
      absl::MutexLock lock(&tracker->mu);
      auto below = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return tracker->in_flight < options.config.max_concurrency;
      };
      if (!stop.Await(&tracker->mu, absl::Condition(&below))) break;
    }
    RequestInput input = prompts[i];
    input.id = absl::StrCat(options.id_prefix, "warmup-", i);
    Send(client, tracker, std::move(input), -1);
  }
  absl::MutexLock lock(&tracker->mu);
  if (!stop.Await(&tracker->mu, absl::Condition(Idle, tracker.get()))) {
    tracker->mu.Unlock();
    client->CancelAll();
    tracker->mu.Lock();
    tracker->mu.AwaitWithTimeout(absl::Condition(Idle, tracker.get()), kCancelGrace);
  }
}

}  // namespace

absl::StatusOr<RunResult> RunLoad(LoadClient* client, const std::vector<RequestInput>& prompts,
                                  const RunOptions& options) {
  WarmUp(client, options);

  auto tracker = std::make_shared<Tracker>();
  {
    absl::MutexLock lock(&tracker->mu);
    tracker->outcomes.resize(prompts.size());
  }
  ArrivalProcess arrivals(options.config.request_rate, options.config.burstiness,
                          ArrivalSeed(options.seed));
  const int max_concurrency = options.config.max_concurrency;
  const int64_t start = MonoNowNs();
  const int64_t deadline = start + static_cast<int64_t>(options.max_duration_s * 1e9);
  std::vector<int64_t> due_ns(prompts.size(), 0);  // each prompt's scheduled send time
  const Stopper stop{deadline, options.interrupted};
  {
    ProgressLine progress(tracker, static_cast<int>(prompts.size()), options.label,
                          options.progress);
    // Absolute schedule: a late send does not push back the ones after it.
    double schedule_s = 0.0;
    for (size_t next = 0; next < prompts.size(); ++next) {
      if (next > 0) schedule_s += arrivals.NextIntervalS();
      const int64_t due = start + static_cast<int64_t>(schedule_s * 1e9);
      if (due >= deadline) break;
      due_ns[next] = due;
      stop.SleepUntil(due);
      if (max_concurrency > 0) {
        absl::MutexLock lock(&tracker->mu);
        auto below = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return tracker->in_flight < max_concurrency;
        };
        stop.Await(&tracker->mu, absl::Condition(&below));
      }
      if (stop.now()) break;
      RequestInput input = prompts[next];
      input.id = absl::StrCat(options.id_prefix, input.id);
      Send(client, tracker, std::move(input), static_cast<int>(next));
    }
    // Wait for the stragglers, then cut what is left at the bound.
    absl::MutexLock lock(&tracker->mu);
    if (!stop.Await(&tracker->mu, absl::Condition(Idle, tracker.get()))) {
      tracker->mu.Unlock();
      client->CancelAll();
      tracker->mu.Lock();
      if (!tracker->mu.AwaitWithTimeout(absl::Condition(Idle, tracker.get()), kCancelGrace)) {
        return absl::InternalError(
            absl::StrFormat("%d requests did not return within %s of being cancelled",
                            tracker->in_flight, absl::FormatDuration(kCancelGrace)));
      }
    }
  }

  RunResult result;
  int64_t last_end = start;
  absl::MutexLock lock(&tracker->mu);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::optional<RequestOutcome>& outcome = tracker->outcomes[i];
    if (!outcome) {
      result.records.push_back(NotSentRecord(static_cast<int>(i), prompts[i]));
      continue;
    }
    RequestInput input = prompts[i];
    input.id = absl::StrCat(options.id_prefix, input.id);
    result.records.push_back(MakeRecord(static_cast<int>(i), input, *outcome, start));
    result.records.back().dispatch_delay_ms =
        static_cast<double>(outcome->send_ns - due_ns[i]) / 1e6;
    last_end = std::max(last_end, outcome->end_ns);
  }
  result.duration_s = static_cast<double>(last_end - start) / 1e9;
  return result;
}

}  // namespace pdserve::loadgen
