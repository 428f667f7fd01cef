#include "engine/engine.h"

#include <sched.h>

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/clock.h"
#include "common/log.h"
#include "engine/grammar/tokenizer_vocab.h"

namespace pdserve {
namespace {

int DefaultThreads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Fans the runner's per-layer notification out to the prefill-only
// sequences that finish their prefill in this step.
class SinkFanout : public LayerObserver {
 public:
  std::vector<Sequence*> seqs;
  void OnLayerStored(int32_t layer) override {
    for (Sequence* s : seqs) s->kv_sink->OnLayerStored(layer, s->blocks);
  }
  // Device events only when every sink takes them (one host wait serves
  // the others otherwise).
  bool TakesDeviceEvents() const override {
    for (const Sequence* s : seqs) {
      if (!s->kv_sink->TakesDeviceEvents()) return false;
    }
    return true;
  }
  void OnLayerStoredOnDevice(int32_t layer, void* stored_event) override {
    for (Sequence* s : seqs) s->kv_sink->OnLayerStoredOnDevice(layer, s->blocks, stored_event);
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model,
                                                       const EngineOptions& options) {
  if (options.max_batch_tokens < 1 || options.max_batch_seqs < 1) {
    return absl::InvalidArgumentError("engine: max_batch_tokens and max_batch_seqs must be >= 1");
  }
  if (options.block_size < 1 || options.block_size > 1024) {
    return absl::InvalidArgumentError("engine: block_size must be in [1, 1024]");
  }
  std::unique_ptr<Engine> e(new Engine(std::move(model), options));
  const ModelConfig& c = e->model_->config();
  KvCacheConfig kc;
  kc.n_layers = c.n_layers;
  kc.n_kv_heads = c.n_kv_heads;
  kc.head_dim = c.head_dim;
  kc.block_size = options.block_size;
  kc.dtype = options.kv_dtype;
  kc.prefix_cache = options.prefix_cache;
  kc.n_blocks = options.kv_blocks;
  if (kc.n_blocks <= 0) {
    kc.n_blocks = static_cast<int32_t>(
        std::min<int64_t>(options.kv_cache_bytes / std::max<int64_t>(1, kc.BlockBytes()), 1 << 30));
  }
  if (kc.n_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("engine: KV cache of ", options.kv_cache_bytes,
                                                   " bytes holds no block of ", kc.BlockBytes(),
                                                   " bytes"));
  }
  auto backend = CreateBackend(options.device, options.pack_weights);
  if (!backend.ok()) return backend.status();
  e->backend_ = std::move(*backend);
  auto cache = KvCache::Create(kc, e->backend_->kv_allocator());
  if (!cache.ok()) return cache.status();
  e->cache_ = std::move(*cache);
  const int32_t n_threads = options.n_threads > 0 ? options.n_threads : DefaultThreads();
  e->pool_ = std::make_unique<kernels::ThreadPool>(n_threads, options.pin_cpus);
  auto runner = e->backend_->CreateRunner(e->model_.get(), e->cache_.get(), e->pool_.get(),
                                          options.max_batch_tokens, options.max_batch_seqs);
  if (!runner.ok()) return runner.status();
  e->runner_ = std::move(*runner);
  SchedulerOptions so;
  so.max_batch_tokens = options.max_batch_tokens;
  so.max_batch_seqs = options.max_batch_seqs;
  e->scheduler_ = std::make_unique<Scheduler>(so, e->cache_.get());
  e->logits_.resize(static_cast<size_t>(options.max_batch_seqs) * c.n_vocab);
  e->PublishStats();
  return e;
}

Engine::Engine(std::shared_ptr<const Model> model, const EngineOptions& options)
    : model_(std::move(model)), options_(options), seed_rng_(std::random_device{}()) {
  limits_.n_ctx = model_->n_ctx();
  limits_.n_vocab = model_->config().n_vocab;
}

Engine::~Engine() { Stop(); }

absl::Status Engine::CheckFits(const RequestSpec& spec) const {
  const int64_t n = std::max<int32_t>(1, spec.sampling.n);
  const int64_t need = KvBlocksNeeded(static_cast<int64_t>(spec.prompt.size()),
                                      spec.stop.max_tokens, n, cache_->config().block_size);
  if (need > cache_->config().n_blocks) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request needs ", need, " KV blocks (prompt ", spec.prompt.size(),
                     " + max_tokens ", spec.stop.max_tokens, " tokens, ", n,
                     " samples) but this node's cache holds ", cache_->config().n_blocks));
  }
  return absl::OkStatus();
}

int32_t Engine::CommittedBlocks(const RequestSpec& spec, SeqMode mode) const {
  const int64_t prompt = static_cast<int64_t>(spec.prompt.size());
  const bool prefill_only = mode == SeqMode::kPrefillOnly;
  return static_cast<int32_t>(KvBlocksNeeded(prompt, prefill_only ? 0 : spec.stop.max_tokens,
                                             prefill_only ? 1 : spec.sampling.n,
                                             cache_->config().block_size));
}

std::unique_ptr<Sequence> Engine::NewSequence(RequestSpec spec, OutputCallback cb, SeqMode mode) {
  auto seq = std::make_unique<Sequence>();
  seq->mode = mode;
  seq->own_group = std::make_unique<SampleGroup>();
  seq->own_group->n_samples = std::max<int32_t>(1, spec.sampling.n);
  seq->group = seq->own_group.get();
  seq->tokens = spec.prompt;
  seq->n_prompt = static_cast<int32_t>(spec.prompt.size());
  seq->on_output = std::move(cb);
  uint64_t seed;
  {
    absl::MutexLock lock(&mu_);
    seed = seed_rng_.Next();
  }
  seq->sampler = std::make_unique<Sampler>(spec.sampling, seed);
  seq->text = std::make_unique<TextStream>(&model_->tokenizer(), spec.stop.stop_strings);
  // A resumed request (RequestSpec::n_resumed): its last prompt tokens were
  // generated before; replay them into the sampler and the text stream (whose
  // text the client has already) so the continuation is token-exact.
  const auto resumed = spec.prompt.end() - spec.n_resumed;
  seq->sampler->AddPromptTokens(std::vector<TokenId>(spec.prompt.begin(), resumed));
  for (auto it = resumed; it != spec.prompt.end(); ++it) {
    seq->sampler->AddGenerated(*it);
    seq->text->Push(*it);
  }
  seq->sampler->SkipSamples(spec.n_resumed);
  seq->times.arrival_ns = MonoNowNs();
  seq->spec = std::make_shared<const RequestSpec>(std::move(spec));
  return seq;
}

namespace {

// A resumed request's generated tokens already went to the client under the
// grammar: its matcher continues from after them, as the sampler does.
absl::Status ReplayResumedIntoGrammar(Sequence& seq) {
  if (seq.matcher == nullptr || seq.spec->n_resumed == 0) return absl::OkStatus();
  const std::vector<TokenId>& prompt = seq.spec->prompt;
  for (auto it = prompt.end() - seq.spec->n_resumed; it != prompt.end(); ++it) {
    if (absl::Status st = seq.matcher->Accept(*it); !st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the resumed tokens do not follow the response format: ", st.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<grammar::TokenMatcher>> Engine::NewMatcher(const RequestSpec& spec) {
  if (!spec.sampling.response_format.enabled()) return std::unique_ptr<grammar::TokenMatcher>();
  grammar::GrammarCompiler* compiler = nullptr;
  {
    absl::MutexLock lock(&grammar_mu_);
    if (grammar_ == nullptr) {
      absl::StatusOr<std::unique_ptr<grammar::GrammarCompiler>> c =
          grammar::CompilerForTokenizer(model_->tokenizer(), model_->config().n_vocab);
      if (!c.ok()) return c.status();
      grammar_ = std::move(*c);
    }
    compiler = grammar_.get();
  }
  // Compiling runs on the caller's thread, outside the lock (the compiler
  // is thread-safe and caches by schema).
  return compiler->NewMatcher(spec.sampling.response_format);
}

absl::Status Engine::Submit(RequestSpec spec, OutputCallback on_output, SeqMode mode,
                            KvSink* sink) {
  if (absl::Status s = ValidateRequest(spec, limits_); !s.ok()) return s;
  if (absl::Status s = CheckFits(spec); !s.ok()) return s;
  if (mode == SeqMode::kDecodeImported) {
    return absl::InvalidArgumentError("imported requests go through Reserve()");
  }
  if (mode == SeqMode::kPrefillOnly && sink == nullptr) {
    return absl::InvalidArgumentError("prefill-only requests need a KV sink");
  }
  absl::StatusOr<std::unique_ptr<grammar::TokenMatcher>> matcher = NewMatcher(spec);
  if (!matcher.ok()) return matcher.status();
  const std::string id = spec.id;
  const int32_t committed = CommittedBlocks(spec, mode);
  std::unique_ptr<Sequence> seq = NewSequence(std::move(spec), std::move(on_output), mode);
  seq->matcher = std::move(*matcher);
  if (absl::Status s = ReplayResumedIntoGrammar(*seq); !s.ok()) return s;
  seq->kv_sink = sink;
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the engine has stopped");
  if (!active_ids_.try_emplace(id, committed).second) {
    return absl::AlreadyExistsError(absl::StrCat("request id '", id, "' is already in use"));
  }
  committed_blocks_ += committed;
  inbox_.push_back(Command{Command::kSubmit, std::move(seq), id});
  return absl::OkStatus();
}

absl::StatusOr<std::vector<BlockId>> Engine::Reserve(RequestSpec spec, OutputCallback on_output) {
  if (absl::Status s = ValidateRequest(spec, limits_); !s.ok()) return s;
  if (absl::Status s = CheckFits(spec); !s.ok()) return s;
  const std::string id = spec.id;
  const int32_t bs = cache_->config().block_size;
  const int32_t n_blocks = (static_cast<int32_t>(spec.prompt.size()) + bs - 1) / bs;
  const int32_t committed = CommittedBlocks(spec, SeqMode::kDecodeImported);
  absl::StatusOr<std::unique_ptr<grammar::TokenMatcher>> matcher = NewMatcher(spec);
  if (!matcher.ok()) return matcher.status();
  std::unique_ptr<Sequence> seq =
      NewSequence(std::move(spec), std::move(on_output), SeqMode::kDecodeImported);
  seq->matcher = std::move(*matcher);
  if (absl::Status s = ReplayResumedIntoGrammar(*seq); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the engine has stopped");
  if (active_ids_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("request id '", id, "' is already in use"));
  }
  std::optional<std::vector<BlockId>> blocks = cache_->Allocate(n_blocks);
  if (!blocks) {
    return absl::ResourceExhaustedError(absl::StrCat("no room for ", n_blocks, " KV blocks now (",
                                                     cache_->Stats().free_blocks, " free)"));
  }
  active_ids_.emplace(id, committed);
  committed_blocks_ += committed;
  seq->blocks = *blocks;
  seq->state = SeqState::kAwaitingKv;
  inbox_.push_back(Command{Command::kSubmit, std::move(seq), id});
  return *blocks;
}

void Engine::Activate(const std::string& id, TokenId first_token) {
  Activate(id, std::vector<TokenId>{first_token});
}
void Engine::Activate(const std::string& id, std::vector<TokenId> first_tokens) {
  Post(Command{Command::kActivate, nullptr, id, std::move(first_tokens), MonoNowNs()});
}
void Engine::Abort(const std::string& id) { Post(Command{Command::kAbort, nullptr, id}); }
void Engine::Release(const std::string& id) { Post(Command{Command::kRelease, nullptr, id}); }

void Engine::Post(Command cmd) {
  absl::MutexLock lock(&mu_);
  inbox_.push_back(std::move(cmd));
}

void Engine::DrainInbox() {
  std::vector<Command> cmds;
  {
    absl::MutexLock lock(&mu_);
    cmds.swap(inbox_);
  }
  for (Command& cmd : cmds) {
    if (cmd.kind == Command::kSubmit) {
      Sequence* s = cmd.seq.get();
      s->order = next_order_++;
      seqs_[cmd.id] = std::move(cmd.seq);
      if (s->state != SeqState::kAwaitingKv) scheduler_->AddWaiting(s);
      continue;
    }
    auto it = seqs_.find(cmd.id);
    if (it == seqs_.end()) continue;  // finished already, or unknown
    Sequence* s = it->second.get();
    switch (cmd.kind) {
      case Command::kActivate:
        HandleActivate(s, cmd);
        break;
      case Command::kAbort:
        AbortGroup(s, /*silent=*/false);
        break;
      case Command::kRelease:
        if (s->state == SeqState::kHeld) Finish(s, FinishReason::kNone);
        break;
      default:
        break;
    }
  }
}

void Engine::Emit(Sequence* seq, SeqOutput& out) {
  out.request_id = seq->id();
  out.sample_index = seq->sample_index;
  out.n_samples = seq->group->n_samples;
  out.prompt_tokens = seq->n_prompt;
  out.completion_tokens = seq->n_generated;
  if (out.finish != FinishReason::kNone && !seq->reported) {
    SampleGroup* g = seq->group;
    seq->reported = true;
    g->completion_tokens += seq->n_generated;
    out.request_done = --g->n_unreported == 0;
    if (out.request_done) out.completion_tokens = static_cast<int32_t>(g->completion_tokens);
  }
  out.cached_tokens = seq->n_cached;
  out.times = seq->times;
  if (seq->on_output) seq->on_output(out);
}

// Ends a sequence: frees its blocks and, unless it already reported its
// end (held prefill-only sequences), tells the client why.
void Engine::Finish(Sequence* seq, FinishReason reason, absl::Status error) {
  const bool reported = seq->reported || seq->state == SeqState::kHeld;
  scheduler_->Remove(seq);
  seq->state = SeqState::kFinished;
  seq->times.finished_ns = MonoNowNs();
  if (!reported && reason != FinishReason::kNone) {
    SeqOutput out;
    out.finish = reason;
    out.error = std::move(error);
    Emit(seq, out);
  }
  // The root owns its samples: the request goes when all of them have.
  if (--seq->group->n_unfinished > 0) return;
  const std::string id = seq->id();
  {
    absl::MutexLock lock(&mu_);
    auto it = active_ids_.find(id);
    if (it != active_ids_.end()) {
      committed_blocks_ -= it->second;
      active_ids_.erase(it);
    }
  }
  seqs_.erase(id);
}

void Engine::ProcessSample(Sequence* seq, const float* logits_row, SeqOutput* out) {
  const int32_t n_vocab = model_->config().n_vocab;
  float* row = const_cast<float*>(logits_row);
  const uint32_t* allowed = nullptr;
  if (seq->matcher != nullptr) {
    seq->token_mask.resize(grammar::BitmaskWords(n_vocab));
    if (absl::Status st = seq->matcher->FillMask(seq->token_mask.data()); !st.ok()) {
      out->finish = FinishReason::kError;
      out->error = absl::InternalError(absl::StrCat("structured output: ", st.message()));
      return;
    }
    allowed = seq->token_mask.data();
  }
  SampleResult r = seq->sampler->Sample(row, n_vocab, allowed);
  const RequestSpec& spec = *seq->spec;
  if (seq->matcher != nullptr) {
    if (absl::Status st = seq->matcher->Accept(r.token); !st.ok()) {
      // The mask allowed nothing the grammar accepts: a bug, reported to
      // the client rather than sent as output that breaks the format.
      out->finish = FinishReason::kError;
      out->error = absl::InternalError(absl::StrCat("structured output: ", st.message()));
      return;
    }
  }
  seq->tokens.push_back(r.token);
  seq->n_generated++;
  seq->sampler->AddGenerated(r.token);
  out->tokens.push_back(r.token);
  if (spec.sampling.logprobs || spec.sampling.top_logprobs > 0) {
    out->logprobs.push_back(r.logprob);
    out->top_logprobs.push_back(std::move(r.top));
  }
  const Tokenizer& tok = model_->tokenizer();
  const bool stop_id = std::find(spec.stop.stop_token_ids.begin(), spec.stop.stop_token_ids.end(),
                                 r.token) != spec.stop.stop_token_ids.end();
  // A complete structured output ends at its stop token even with ignore_eos.
  const bool grammar_done = seq->matcher != nullptr && seq->matcher->IsTerminated();
  if ((!spec.stop.ignore_eos && tok.IsEog(r.token)) || stop_id || grammar_done) {
    out->text += seq->text->Flush();
    out->finish = FinishReason::kStop;
    return;
  }
  TextStream::Delta d = seq->text->Push(r.token);
  out->text += d.text;
  if (d.stopped) {
    out->finish = FinishReason::kStop;
  } else if (seq->n_generated >= spec.stop.max_tokens || seq->n_tokens() >= limits_.n_ctx) {
    out->text += seq->text->Flush();
    out->finish = FinishReason::kLength;
  }
}

bool Engine::Step() {
  const int64_t entry = MonoNowNs();
  DrainInbox();
  Schedule sched = scheduler_->Next();
  counters_.preemptions += static_cast<int64_t>(sched.preempted.size());
  for (Sequence* s : sched.preempted) {
    PDS_LOG(DEBUG) << "preempted " << s->id() << " (" << s->n_tokens() << " tokens)";
  }
  if (sched.empty()) {
    PublishStats();
    return false;
  }
  const int64_t step_start = MonoNowNs();

  // Flatten the schedule into one batch.
  batch_.Clear();
  SinkFanout fanout;
  StepRecord rec;
  rec.start_ns = step_start;
  rec.schedule_ns = step_start - entry;
  rec.idle_before_ns = last_step_end_ns_ > 0 ? step_start - last_step_end_ns_ : 0;
  for (const ScheduledSeq& it : sched.items) {
    Sequence* s = it.seq;
    if (s->n_computed < s->n_prompt) {
      const double past = s->n_computed, n = it.n_new;
      rec.prefill_tokens += it.n_new;
      rec.attention_pairs += n * past + n * (n + 1) / 2;  // token i attends to past + i
    } else {
      rec.decode_seqs++;
      rec.decode_context += s->n_computed + it.n_new;
    }
    if (s->times.scheduled_ns == 0) s->times.scheduled_ns = step_start;
    kernels::AttnSeq a;
    a.block_table = s->blocks.data();
    a.n_past = s->n_computed;
    a.n_new = it.n_new;
    a.row0 = batch_.n_tokens();
    batch_.seqs.push_back(a);
    batch_.tokens.insert(batch_.tokens.end(), s->tokens.begin() + s->n_computed,
                         s->tokens.begin() + s->n_computed + it.n_new);
    if (it.want_logits) {
      batch_.logit_rows.push_back(batch_.n_tokens() - 1);
      if (s->mode == SeqMode::kPrefillOnly) fanout.seqs.push_back(s);
    }
  }
  runner_->Forward(batch_, logits_.data(), fanout.seqs.empty() ? nullptr : &fanout);
  const int64_t step_end = MonoNowNs();
  counters_.steps++;
  rec.forward_ns = step_end - step_start;

  // Sample, stream, and retire.
  const int32_t n_vocab = model_->config().n_vocab;
  const int32_t bs = cache_->config().block_size;
  int32_t logit_index = 0;
  std::vector<Sequence*> finished;
  std::vector<std::string> failed;
  for (const ScheduledSeq& it : sched.items) {
    Sequence* s = it.seq;
    const int32_t before = s->n_computed;
    s->n_computed += it.n_new;
    if (s->n_computed > s->n_prompt || before < s->n_prompt) {
      counters_.prompt_tokens_computed +=
          std::max(0, std::min(s->n_computed, s->n_prompt) - before);
    }
    // Offer newly completed full blocks to the prefix cache.
    if (s->n_computed / bs > before / bs)
      cache_->Publish(s->blocks, s->tokens.data(), s->n_computed);
    if (!it.want_logits) continue;
    const float* row = logits_.data() + static_cast<size_t>(logit_index++) * n_vocab;
    SeqOutput out;
    // n > 1: the other samples draw token #1 from the same row first (the
    // prompt's KV is computed once), on this node or, prefill-only, for the
    // decode node to start from.
    const bool first_of_many = s->group->n_samples > 1 && !s->group->forked && s->sample_index == 0;
    absl::Status forked;
    if (first_of_many && s->mode == SeqMode::kPrefillOnly) {
      forked = SampleFirstTokens(s, row, &out);
    } else if (first_of_many) {
      forked = StartForks(s, row, step_start, step_end, &finished);
    }
    if (!forked.ok()) {
      out.finish = FinishReason::kError;
      out.error = std::move(forked);
    } else {
      ProcessSample(s, row, &out);
    }
    if (first_of_many && s->mode == SeqMode::kPrefillOnly && out.finish != FinishReason::kError) {
      SampleFirstToken& t = out.samples[0];
      t.token = out.tokens.at(0);
      t.text = out.text;
      if (!out.logprobs.empty()) t.logprob = out.logprobs[0];
      if (!out.top_logprobs.empty()) t.top = out.top_logprobs[0];
      t.finish = out.finish;
      // The request ends at token #1 only when every sample does.
      for (const SampleFirstToken& x : out.samples) {
        if (x.finish == FinishReason::kNone) out.finish = FinishReason::kNone;
      }
    }
    counters_.generated_tokens++;
    if (s->times.first_token_ns == 0) {
      s->times.first_token_ns = step_end;
      s->times.first_step_ns = step_end - step_start;
    }
    if (s->mode == SeqMode::kPrefillOnly && out.finish != FinishReason::kError) {
      // Token #1 is out; the blocks stay until the decode side has them.
      out.prefill_done = true;
      std::vector<BlockId> held = std::move(s->blocks);
      s->blocks.clear();
      scheduler_->Remove(s);
      s->blocks = std::move(held);
      s->state = SeqState::kHeld;
      Emit(s, out);
      continue;
    }
    if (out.finish != FinishReason::kNone) s->times.finished_ns = step_end;
    // One sample failing fails the request: its samples go too, silently.
    if (out.finish == FinishReason::kError && s->group->n_samples > 1) failed.push_back(s->id());
    Emit(s, out);
    if (out.finish != FinishReason::kNone) finished.push_back(s);
  }
  for (Sequence* s : finished) Finish(s, FinishReason::kNone);  // reported already
  for (const std::string& id : failed) {
    auto it = seqs_.find(id);
    if (it != seqs_.end()) AbortGroup(it->second.get(), /*silent=*/true);
  }
  PublishStats();
  last_step_end_ns_ = MonoNowNs();
  if (step_observer_ != nullptr) {
    rec.total_ns = last_step_end_ns_ - step_start;
    step_observer_->OnStep(rec);
  }
  return true;
}

void Engine::PublishStats() {
  EngineStats s = counters_;
  s.n_running = scheduler_->n_running();
  s.n_waiting = scheduler_->n_waiting();
  s.queued_prefill_tokens = scheduler_->QueuedPrefillTokens();
  for (const auto& [id, seq] : seqs_) {
    if (seq->state == SeqState::kAwaitingKv) s.n_awaiting_kv++;
    if (seq->state == SeqState::kHeld) s.n_held++;
  }
  s.kv = cache_->Stats();
  absl::MutexLock lock(&mu_);
  published_ = s;
}

EngineStats Engine::Stats() const {
  absl::MutexLock lock(&mu_);
  EngineStats s = published_;
  s.kv = cache_->Stats();
  s.committed_kv_blocks = committed_blocks_;
  return s;
}

void Engine::Start() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = false;
  }
  loop_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (loop_.joinable()) loop_.join();
  // No engine thread now: this one owns the engine's state. Queued
  // commands are applied (a Submit becomes a sequence, an Abort ends one),
  // then whatever is left is failed through its callback.
  DrainInbox();
  std::vector<std::string> ids;
  ids.reserve(seqs_.size());
  for (const auto& [id, seq] : seqs_) ids.push_back(id);
  for (const std::string& id : ids) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) continue;
    AbortGroup(it->second.get(), /*silent=*/false,
               absl::UnavailableError("the engine stopped before the request finished"));
  }
}

void Engine::Loop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    if (paused_for_test_.load(std::memory_order_relaxed)) {
      absl::SleepFor(absl::Milliseconds(10));  // a stalled engine: no step, no spin
      continue;
    }
    if (Step()) continue;
    // Idle: sleep until a command arrives (or a short timeout).
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !inbox_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(50));
  }
}

}  // namespace pdserve
