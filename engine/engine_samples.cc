// n > 1 samples of one request (Engine's SampleGroup logic): forking the
// prompt's KV copy-on-write, token #1 of every sample from one logits row,
// activation of imported samples, and ending them together.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "engine/engine.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<Sequence>> Engine::NewSample(const Sequence& root, int32_t index) {
  const RequestSpec& spec = *root.spec;
  absl::StatusOr<std::unique_ptr<grammar::TokenMatcher>> matcher = NewMatcher(spec);
  if (!matcher.ok()) return matcher.status();
  auto seq = std::make_unique<Sequence>();
  seq->spec = root.spec;
  seq->sample_index = index;
  seq->group = root.group;
  seq->mode = root.mode;
  seq->order = root.order;
  seq->tokens = spec.prompt;
  seq->n_prompt = root.n_prompt;
  seq->n_cached = root.n_cached;
  seq->prefix_checked = true;
  SamplingParams params = spec.sampling;
  if (params.seed) params.seed = SampleSeed(*params.seed, index);
  uint64_t seed;
  {
    absl::MutexLock lock(&mu_);
    seed = seed_rng_.Next();
  }
  seq->sampler = std::make_unique<Sampler>(params, seed);
  seq->sampler->AddPromptTokens(spec.prompt);  // n > 1 is never resumed
  seq->matcher = std::move(*matcher);
  seq->text = std::make_unique<TextStream>(&model_->tokenizer(), spec.stop.stop_strings);
  seq->on_output = root.on_output;
  seq->times = root.times;
  return seq;
}

absl::StatusOr<std::vector<Sequence*>> Engine::ForkSamples(Sequence* root) {
  SampleGroup* g = root->group;
  g->forked = true;
  std::vector<std::unique_ptr<Sequence>> forks;
  auto give_back = [&] {
    for (auto& f : forks) cache_->Release(f->blocks);
  };
  for (int32_t i = 1; i < g->n_samples; ++i) {
    absl::StatusOr<std::unique_ptr<Sequence>> f = NewSample(*root, i);
    if (!f.ok()) {
      give_back();
      return f.status();
    }
    int32_t n_shared = 0;
    std::optional<std::vector<BlockId>> table =
        cache_->Fork(root->blocks, root->n_computed, &n_shared);
    if (!table) {
      give_back();
      return absl::ResourceExhaustedError(absl::StrCat("no KV block free to fork sample ", i,
                                                       " of ", g->n_samples, " (",
                                                       cache_->Stats().free_blocks, " free)"));
    }
    (*f)->blocks = std::move(*table);
    (*f)->n_computed = n_shared;
    forks.push_back(std::move(*f));
  }
  std::vector<Sequence*> out;
  for (auto& f : forks) {
    out.push_back(f.get());
    g->forks.push_back(std::move(f));
    g->n_unfinished++;
    g->n_unreported++;
  }
  return out;
}

absl::Status Engine::StartForks(Sequence* root, const float* row, int64_t step_start,
                                int64_t step_end, std::vector<Sequence*>* finished) {
  absl::StatusOr<std::vector<Sequence*>> forks = ForkSamples(root);
  if (!forks.ok()) return forks.status();
  const int32_t n_vocab = model_->config().n_vocab;
  std::vector<float> scratch(n_vocab);
  for (Sequence* f : *forks) {
    std::copy(row, row + n_vocab, scratch.begin());
    SeqOutput out;
    ProcessSample(f, scratch.data(), &out);
    counters_.generated_tokens++;
    f->times.scheduled_ns = root->times.scheduled_ns;
    f->times.first_token_ns = step_end;
    f->times.first_step_ns = step_end - step_start;
    if (out.finish != FinishReason::kNone) {
      f->times.finished_ns = step_end;
      finished->push_back(f);
    } else {
      scheduler_->AddRunning(f);
    }
    Emit(f, out);
  }
  return absl::OkStatus();
}

absl::Status Engine::SampleFirstTokens(Sequence* root, const float* row, SeqOutput* out) {
  const int32_t n_vocab = model_->config().n_vocab;
  std::vector<float> scratch(n_vocab);
  out->samples.resize(root->group->n_samples);
  for (int32_t i = 1; i < root->group->n_samples; ++i) {
    absl::StatusOr<std::unique_ptr<Sequence>> f = NewSample(*root, i);
    if (!f.ok()) return f.status();
    std::copy(row, row + n_vocab, scratch.begin());
    SeqOutput o;
    ProcessSample(f->get(), scratch.data(), &o);
    counters_.generated_tokens++;
    if (o.finish == FinishReason::kError) return o.error;
    SampleFirstToken& t = out->samples[i];
    t.token = o.tokens.at(0);
    t.text = std::move(o.text);
    if (!o.logprobs.empty()) t.logprob = o.logprobs[0];
    if (!o.top_logprobs.empty()) t.top = std::move(o.top_logprobs[0]);
    t.finish = o.finish;
  }
  return absl::OkStatus();
}

absl::StatusOr<FinishReason> Engine::TakeFirstToken(Sequence* s, TokenId token, int64_t time_ns) {
  s->tokens.push_back(token);
  s->n_generated = 1;
  s->sampler->AddGenerated(token);
  s->sampler->SkipSamples(1);  // the prefill node's draw for token #1
  s->text->Push(token);        // the prefill node already emitted its text
  // The grammar state follows token #1 (the prefill node sampled it under
  // the same grammar); a token it refuses is a broken peer.
  if (s->matcher != nullptr) {
    if (absl::Status st = s->matcher->Accept(token); !st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token #1 from the prefill node: ", st.message()));
    }
  }
  s->times.activated_ns = time_ns;
  const StopParams& stop = s->spec->stop;
  if ((!stop.ignore_eos && model_->tokenizer().IsEog(token)) ||
      std::find(stop.stop_token_ids.begin(), stop.stop_token_ids.end(), token) !=
          stop.stop_token_ids.end() ||
      (s->matcher != nullptr && s->matcher->IsTerminated())) {
    return FinishReason::kStop;
  }
  if (s->n_generated >= stop.max_tokens) return FinishReason::kLength;
  return FinishReason::kNone;
}

void Engine::HandleActivate(Sequence* s, const Command& cmd) {
  if (s->state != SeqState::kAwaitingKv) return;
  SampleGroup* g = s->group;
  if (static_cast<int32_t>(cmd.tokens.size()) != g->n_samples) {
    Finish(s, FinishReason::kError,
           absl::InvalidArgumentError(absl::StrCat("the prefill node sent token #1 of ",
                                                   cmd.tokens.size(),
                                                   " samples for n = ", g->n_samples)));
    return;
  }
  // The prompt's KV is in place; token #1 of each sample is its next input.
  s->n_computed = s->n_prompt;
  if (g->n_samples == 1) {
    absl::StatusOr<FinishReason> r = TakeFirstToken(s, cmd.tokens[0], cmd.time_ns);
    if (!r.ok()) {
      Finish(s, FinishReason::kError, r.status());
    } else if (*r != FinishReason::kNone) {
      // Token #1 already ends the request (the router normally does not
      // activate then).
      Finish(s, *r);
    } else {
      scheduler_->AddRunning(s);
    }
    return;
  }
  absl::StatusOr<std::vector<Sequence*>> forks = ForkSamples(s);
  if (!forks.ok()) {
    Finish(s, FinishReason::kError, forks.status());
    return;
  }
  std::vector<Sequence*> members = {s};
  members.insert(members.end(), forks->begin(), forks->end());
  std::vector<std::pair<Sequence*, FinishReason>> taken;
  for (size_t i = 0; i < members.size(); ++i) {
    absl::StatusOr<FinishReason> r = TakeFirstToken(members[i], cmd.tokens[i], cmd.time_ns);
    if (!r.ok()) {
      // A broken peer: the request fails as a whole.
      for (Sequence* f : *forks) f->reported = true;
      for (Sequence* f : *forks) Finish(f, FinishReason::kNone);
      Finish(s, FinishReason::kError, r.status());
      return;
    }
    taken.emplace_back(members[i], *r);
  }
  // Samples token #1 ended were reported by the prefill node: they end
  // without output, unless that leaves the request without its last word.
  for (auto& [m, reason] : taken) {
    if (reason == FinishReason::kNone) {
      scheduler_->AddRunning(m);
      continue;
    }
    if (g->n_unreported > 1) {
      m->reported = true;
      g->n_unreported--;
      g->completion_tokens += m->n_generated;
    }
    Finish(m, reason);  // the root goes last: it owns the others
  }
}

void Engine::AbortGroup(Sequence* root, bool silent, absl::Status error) {
  std::vector<Sequence*> members;
  for (auto& f : root->group->forks) {
    if (f->state != SeqState::kFinished) members.push_back(f.get());
  }
  if (root->state != SeqState::kFinished) members.push_back(root);
  // Each Finish may end the group (the last one frees every member).
  for (Sequence* m : members) {
    if (silent) m->reported = true;
    if (error.ok()) {
      Finish(m, FinishReason::kAbort);
    } else {
      Finish(m, FinishReason::kError, error);
    }
  }
}

}  // namespace pdserve
