// Continuous batching: each step takes every running decode sequence (one
// token each) and fills the rest of a token budget with prefill chunks,
// oldest first. When the KV cache runs out, the newest running sequence is
// preempted and later recomputed. The scheduler never sees block internals:
// the cache answers "no room" as a value.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/sequence.h"

namespace pdserve {

struct SchedulerOptions {
  int32_t max_batch_tokens = 512;  // token budget per step
  int32_t max_batch_seqs = 64;     // sequences per step
};

struct ScheduledSeq {
  Sequence* seq = nullptr;
  int32_t n_new = 0;         // tokens computed this step
  bool want_logits = false;  // the chunk reaches the end: sample after it
};

struct Schedule {
  std::vector<ScheduledSeq> items;
  std::vector<Sequence*> preempted;
  int32_t n_tokens = 0;
  bool empty() const { return items.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, KvCache* cache);

  void AddWaiting(Sequence* seq);
  // Removes a sequence wherever it is (running or waiting) and frees its blocks.
  void Remove(Sequence* seq);
  // Joins an imported sequence whose KV landed straight into the running set.
  void AddRunning(Sequence* seq);

  Schedule Next();

  int32_t n_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t n_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  // Prompt tokens not computed yet, over waiting and running sequences.
  int64_t QueuedPrefillTokens() const;

 private:
  // Grows seq's block table to cover n_tokens positions; false when no room.
  bool EnsureBlocks(Sequence* seq, int32_t n_tokens);
  void Preempt(Sequence* seq);
  Schedule TryNext();

  SchedulerOptions options_;
  KvCache* cache_;
  std::vector<Sequence*> running_;  // arrival order
  std::deque<Sequence*> waiting_;   // preempted first, then arrival order
};

}  // namespace pdserve
