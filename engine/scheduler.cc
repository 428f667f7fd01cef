#include "engine/scheduler.h"

#include <algorithm>

#include "common/check.h"

namespace pdserve {

Scheduler::Scheduler(const SchedulerOptions& options, KvCache* cache)
    : options_(options), cache_(cache) {}

void Scheduler::AddWaiting(Sequence* seq) {
  seq->state = SeqState::kWaiting;
  waiting_.push_back(seq);
}

void Scheduler::AddRunning(Sequence* seq) {
  seq->state = SeqState::kRunning;
  // Keep running_ in arrival order so preemption picks the newest.
  auto it =
      std::upper_bound(running_.begin(), running_.end(), seq,
                       [](const Sequence* a, const Sequence* b) { return a->order < b->order; });
  running_.insert(it, seq);
}

void Scheduler::Remove(Sequence* seq) {
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq), waiting_.end());
  if (!seq->blocks.empty()) {
    cache_->Release(seq->blocks);
    seq->blocks.clear();
  }
}

bool Scheduler::EnsureBlocks(Sequence* seq, int32_t n_tokens) {
  const int32_t bs = cache_->config().block_size;
  const int32_t need = (n_tokens + bs - 1) / bs - static_cast<int32_t>(seq->blocks.size());
  if (need <= 0) return true;
  std::optional<std::vector<BlockId>> got = cache_->Allocate(need);
  if (!got) return false;
  seq->blocks.insert(seq->blocks.end(), got->begin(), got->end());
  return true;
}

void Scheduler::Preempt(Sequence* seq) {
  // Recompute later: drop the KV, keep the tokens (prompt and generated).
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  cache_->Release(seq->blocks);
  seq->blocks.clear();
  seq->n_computed = 0;
  seq->prefix_checked = false;
  seq->state = SeqState::kWaiting;
  waiting_.push_front(seq);
}

int64_t Scheduler::QueuedPrefillTokens() const {
  int64_t n = 0;
  for (const Sequence* s : waiting_) n += s->n_pending();
  for (const Sequence* s : running_) {
    if (s->n_pending() > 1) n += s->n_pending();
  }
  return n;
}

Schedule Scheduler::Next() {
  Schedule sched = TryNext();
  // Sequences mid-prefill can each hold part of the cache and all wait for
  // more: free the newest until something runs.
  while (sched.empty() && running_.size() > 1) {
    Sequence* victim = running_.back();
    Preempt(victim);
    std::vector<Sequence*> preempted = std::move(sched.preempted);
    preempted.push_back(victim);
    sched = TryNext();
    sched.preempted.insert(sched.preempted.begin(), preempted.begin(), preempted.end());
  }
  return sched;
}

Schedule Scheduler::TryNext() {
  Schedule sched;
  int32_t budget = options_.max_batch_tokens;

  // 1. Decode steps of running sequences, oldest first; preempt the newest
  //    when a block cannot be found.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    if (s->n_pending() != 1) {
      ++i;
      continue;
    }
    if (static_cast<int32_t>(sched.items.size()) >= options_.max_batch_seqs) break;
    bool fits = EnsureBlocks(s, s->n_computed + 1);
    while (!fits) {
      Sequence* victim = running_.back();
      if (victim == s) break;
      // A victim already scheduled this step keeps its place: stop instead.
      bool scheduled = std::any_of(sched.items.begin(), sched.items.end(),
                                   [&](const ScheduledSeq& it) { return it.seq == victim; });
      if (scheduled) break;
      Preempt(victim);
      sched.preempted.push_back(victim);
      fits = EnsureBlocks(s, s->n_computed + 1);
    }
    if (!fits) {
      Preempt(s);
      sched.preempted.push_back(s);
      continue;  // running_[i] is now the next sequence
    }
    sched.items.push_back({s, 1, true});
    budget -= 1;
    ++i;
  }

  // 2. Prefill chunks: running sequences mid-prefill, then waiting ones.
  auto add_chunk = [&](Sequence* s) -> bool {
    if (budget <= 0 || static_cast<int32_t>(sched.items.size()) >= options_.max_batch_seqs) {
      return false;
    }
    if (!s->prefix_checked) {
      // Reuse cached full blocks, but always compute the last token.
      s->prefix_checked = true;
      if (s->blocks.empty() && s->n_computed == 0) {
        const int32_t matched =
            cache_->MatchPrefix(s->tokens.data(), s->n_tokens() - 1, &s->blocks);
        s->n_computed = matched;
        s->n_cached = std::min(matched, s->n_prompt);
      }
    }
    const int32_t n_new = std::min(s->n_pending(), budget);
    if (!EnsureBlocks(s, s->n_computed + n_new)) return false;
    sched.items.push_back({s, n_new, s->n_computed + n_new == s->n_tokens()});
    budget -= n_new;
    return true;
  };
  for (Sequence* s : running_) {
    if (s->n_pending() > 1 && !add_chunk(s)) break;
  }
  while (!waiting_.empty() && budget > 0) {
    Sequence* s = waiting_.front();
    if (!add_chunk(s)) {
      // Could not get blocks: give back any prefix blocks just matched.
      if (s->n_computed > 0 && s->state == SeqState::kWaiting) {
        cache_->Release(s->blocks);
        s->blocks.clear();
        s->n_computed = 0;
        s->n_cached = 0;
        s->prefix_checked = false;
      }
      break;
    }
    waiting_.pop_front();
    AddRunning(s);
  }
  for (const ScheduledSeq& it : sched.items) sched.n_tokens += it.n_new;
  return sched;
}

}  // namespace pdserve
