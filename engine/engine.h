// The model runtime every node uses: continuous batching over a paged KV
// cache. Requests join and leave between steps. Three kinds of request
// (SeqMode): full generation, prefill-only (a prefill node: KV goes to a
// KvSink layer by layer, token #1 comes back, blocks stay held until
// Release) and imported decode (a decode node: Reserve blocks, the KV lands
// in them from elsewhere, Activate joins the decode loop).
//
// Threads: public methods are thread-safe; they post commands that the
// engine thread applies between steps. Output callbacks run on the engine
// thread and must not block.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/backend.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "kernels/cpu/thread_pool.h"

namespace pdserve {

struct EngineOptions {
  std::string device = "cpu";            // cpu, cuda, cuda:N
  int32_t n_threads = 0;                 // 0: every CPU this process may run on
  std::vector<int> pin_cpus;             // pin pool threads to these CPUs (empty: no pinning)
  int64_t kv_cache_bytes = 256ll << 20;  // KV capacity, unless kv_blocks is set
  int32_t kv_blocks = 0;
  int32_t block_size = 16;
  kernels::DType kv_dtype = kernels::DType::kF16;
  int32_t max_batch_tokens = 512;  // token budget per step (chunked prefill)
  int32_t max_batch_seqs = 64;
  bool prefix_cache = true;
  bool pack_weights = true;  // CPU: repacked copy of the matrices (+ their size in RAM)
};

struct EngineStats {
  int32_t n_running = 0;
  int32_t n_waiting = 0;
  int32_t n_awaiting_kv = 0;
  int32_t n_held = 0;
  int64_t queued_prefill_tokens = 0;
  int64_t steps = 0;
  int64_t prompt_tokens_computed = 0;
  int64_t generated_tokens = 0;
  int64_t preemptions = 0;
  // KV blocks the live requests may grow to (prompt + max_tokens each;
  // prompt only for prefill-only ones), counted from Submit/Reserve to their
  // end: what this node has promised, whichever router sent the work.
  int64_t committed_kv_blocks = 0;
  KvCacheStats kv;
};

// One engine step as it ran: its shape in the planner's terms (a prompt
// chunk is prefill, a sequence past its prompt computing one token is
// decode) and where its time went. For step logs (`--step-log-dir`) that
// compare a running node with its profile.
struct StepRecord {
  int64_t start_ns = 0;        // MonoNowNs as the batch is built (after scheduling)
  int64_t schedule_ns = 0;     // commands applied and the batch scheduled, before start
  int64_t forward_ns = 0;      // the model's forward pass
  int64_t total_ns = 0;        // start to the end of sampling and output callbacks
  int64_t idle_before_ns = 0;  // from the previous step's end to this one's start (0: first)
  int32_t prefill_tokens = 0;
  double attention_pairs = 0;  // over prefill tokens: the positions each attends to
  int32_t decode_seqs = 0;
  int64_t decode_context = 0;  // over decode sequences: the positions they attend to
};

// Sees every step, on the engine thread, after its outputs were emitted;
// must not block or call into the engine.
class StepObserver {
 public:
  virtual ~StepObserver() = default;
  virtual void OnStep(const StepRecord& step) = 0;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model,
                                                        const EngineOptions& options);
  ~Engine();

  const Model& model() const { return *model_; }
  KvCache& cache() { return *cache_; }
  const RequestLimits& limits() const { return limits_; }
  int32_t n_threads() const { return pool_->size(); }
  const std::string backend_name() const { return backend_->name(); }

  // Queues a request. InvalidArgument for a bad request, AlreadyExists for
  // an id in use, ResourceExhausted when it could never fit the cache.
  absl::Status Submit(RequestSpec spec, OutputCallback on_output, SeqMode mode = SeqMode::kFull,
                      KvSink* sink = nullptr);
  // Imported decode: reserves blocks for the prompt's KV now (from the
  // calling thread) and returns them, or ResourceExhausted when the cache
  // has no room at the moment.
  absl::StatusOr<std::vector<BlockId>> Reserve(RequestSpec spec, OutputCallback on_output);
  // The reserved blocks hold the prompt's KV; `first_token` (sampled by the
  // prefill node) is the next input. Joins the decode loop.
  void Activate(const std::string& id, TokenId first_token);
  // n > 1 samples: token #1 of each (as many as the request's n). The
  // samples fork the prompt's blocks copy-on-write; a fork that finds no
  // block fails the request with ResourceExhausted. A sample that token #1
  // already ended finishes without an output of its own (the prefill node
  // reported it).
  void Activate(const std::string& id, std::vector<TokenId> first_tokens);
  // Ends a request in any state; its callback gets finish = kAbort (unless
  // it already finished) and its blocks are freed before the next step.
  // For imported requests the caller must stop writes into the blocks first.
  void Abort(const std::string& id);
  // Prefill-only: frees (or leaves to the prefix cache) the held blocks.
  void Release(const std::string& id);

  // One scheduling step on the calling thread; false when idle.
  bool Step();
  // Runs steps on a background thread until Stop().
  void Start();
  // Stops the loop, then ends every request still queued or running with
  // an Unavailable error through its callback (each callback runs exactly
  // once: a caller waiting for it is never left holding its request).
  // Submit and Reserve are refused afterwards. The destructor calls it.
  void Stop();
  // Test seam (fault injection, `--test-stall-file`): while paused the loop
  // takes no step, so queued work stalls with the process alive.
  void SetPausedForTest(bool paused) { paused_for_test_.store(paused); }

  EngineStats Stats() const;

  // Set before Start() (or between Step() calls of the thread that calls
  // them); null: none. The observer must outlive the engine's steps.
  void SetStepObserver(StepObserver* observer) { step_observer_ = observer; }

 private:
  Engine(std::shared_ptr<const Model> model, const EngineOptions& options);
  struct Command {
    enum Kind { kSubmit, kActivate, kAbort, kRelease } kind;
    std::unique_ptr<Sequence> seq;  // kSubmit
    std::string id;
    std::vector<TokenId> tokens;  // kActivate: token #1 of each sample
    int64_t time_ns = 0;
  };
  void Post(Command cmd);
  void DrainInbox();
  void Finish(Sequence* seq, FinishReason reason, absl::Status error = absl::OkStatus());
  void Emit(Sequence* seq, SeqOutput& out);
  void ProcessSample(Sequence* seq, const float* logits, SeqOutput* out);
  std::unique_ptr<Sequence> NewSequence(RequestSpec spec, OutputCallback cb, SeqMode mode);
  // Sample `index` of root's request: its own generator, penalties, text
  // stream and grammar state; no blocks, no tokens past the prompt.
  absl::StatusOr<std::unique_ptr<Sequence>> NewSample(const Sequence& root, int32_t index);
  // n > 1: forks samples 1..n-1 off root, whose KV covers its prompt,
  // sharing its blocks (KvCache::Fork). All or nothing; ResourceExhausted
  // when the cache has no room for the copies. The forks are not scheduled.
  absl::StatusOr<std::vector<Sequence*>> ForkSamples(Sequence* root);
  // Samples 1..n-1 of a full request draw token #1 from root's logits row
  // (before root does: sampling uses the row as scratch) and join the batch.
  absl::Status StartForks(Sequence* root, const float* row, int64_t step_start, int64_t step_end,
                          std::vector<Sequence*>* finished);
  // Prefill-only with n > 1: token #1 of samples 1..n-1 from root's row.
  absl::Status SampleFirstTokens(Sequence* root, const float* row, SeqOutput* out);
  void HandleActivate(Sequence* s, const Command& cmd);
  // Token #1 from the prefill node: into the sequence's state; the reason it
  // already ends the sample (kNone: it goes on), or an error.
  absl::StatusOr<FinishReason> TakeFirstToken(Sequence* s, TokenId token, int64_t time_ns);
  // Ends root's request, every sample: kAbort, or kError with `error`
  // when it is not OK.
  void AbortGroup(Sequence* root, bool silent, absl::Status error = absl::OkStatus());
  int32_t CommittedBlocks(const RequestSpec& spec, SeqMode mode) const;
  // The grammar state for a structured-output request (null for free
  // text); InvalidArgument for a schema that does not compile.
  absl::StatusOr<std::unique_ptr<grammar::TokenMatcher>> NewMatcher(const RequestSpec& spec);
  absl::Status CheckFits(const RequestSpec& spec) const;
  void PublishStats();
  void Loop();

  std::shared_ptr<const Model> model_;
  EngineOptions options_;
  RequestLimits limits_;
  std::unique_ptr<kernels::ThreadPool> pool_;
  std::unique_ptr<Backend> backend_;  // outlives the cache it allocates
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Runner> runner_;
  std::unique_ptr<Scheduler> scheduler_;

  // Engine-thread state.
  absl::flat_hash_map<std::string, std::unique_ptr<Sequence>> seqs_;
  ForwardBatch batch_;
  std::vector<float> logits_;  // (max_batch_seqs, n_vocab)
  uint64_t next_order_ = 0;
  Rng seed_rng_;
  EngineStats counters_;
  StepObserver* step_observer_ = nullptr;
  int64_t last_step_end_ns_ = 0;

  // Structured outputs: built on the first request that asks for one
  // (indexing the vocabulary takes a moment); thread-safe once built.
  absl::Mutex grammar_mu_;
  std::unique_ptr<grammar::GrammarCompiler> grammar_ ABSL_GUARDED_BY(grammar_mu_);

  // Commands from other threads.
  mutable absl::Mutex mu_;
  std::vector<Command> inbox_ ABSL_GUARDED_BY(mu_);
  // Live request ids, each with the KV blocks it may grow to (CommittedBlocks).
  absl::flat_hash_map<std::string, int> active_ids_ ABSL_GUARDED_BY(mu_);
  int64_t committed_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  EngineStats published_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> paused_for_test_{false};
  std::thread loop_;
};

}  // namespace pdserve
