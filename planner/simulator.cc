#include "planner/simulator.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <queue>

#include "absl/strings/str_cat.h"

namespace pdserve::planner {
namespace {

enum class Role { kPrefill, kDecode, kMixed };
enum class EventKind { kArrival, kAtNode, kStepDone, kKvReady };

struct Event {
  double t;
  uint64_t seq;  // insertion order: the tie-break that keeps runs deterministic
  EventKind kind;
  int32_t node;
  int32_t req;
  uint64_t version = 0;  // kStepDone: the node's step_version it was timed for
};
struct Later {
  bool operator()(const Event& a, const Event& b) const {
    return a.t > b.t || (a.t == b.t && a.seq > b.seq);
  }
};

struct Chunk {
  int32_t req;
  int32_t n_new;
};

struct Node {
  Role role;
  const DeviceProfile* profile;
  int32_t index;  // within its pool
  int64_t free_blocks = 0;
  // Prompt tokens of requests sent here whose first token is not out yet:
  // the router's count of a node's prefill work (whole prompts, until the
  // node answers), which its selection uses.
  int64_t unanswered_prompt_tokens = 0;
  int32_t inflight = 0;
  bool busy = false;
  std::deque<int32_t> prefill_queue;  // prompts not fully computed, FCFS
  std::vector<int32_t> running;       // decoding, in arrival order
  double link_free_s = 0;             // prefill: when its link is next idle
  // The step in progress.
  std::vector<Chunk> chunks;
  std::vector<int32_t> decodes;
  double step_start_s = 0;
  // It takes alone_s with the host to itself and co_run_s beside another
  // computing node; done_frac of it was computed by progress_at_s, at the
  // speed `contended` says. Each re-timing bumps step_version, which makes
  // the completion event timed before it stale.
  double step_alone_s = 0;
  double step_co_run_s = 0;
  double step_done_frac = 0;
  double progress_at_s = 0;
  bool step_contended = false;
  uint64_t step_version = 0;
  // When the node's last step with prefill tokens ended (decode steps after
  // it cost more: PostPrefillCost); never, for a decode node.
  double last_prefill_end_s = -std::numeric_limits<double>::infinity();
};

struct ReqState {
  int32_t computed = 0;   // prompt tokens computed
  int32_t generated = 0;  // output tokens produced
  double first_token_s = 0;
  double last_token_s = 0;
  double kv_ready_s = 0;
  int32_t prefill_node = -1;  // indexes into nodes_
  int32_t decode_node = -1;   // decode or colocated node
  int64_t blocks = 0;
};

class Sim {
 public:
  Sim(const std::vector<SimRequest>& requests, const SimOptions& o) : reqs_(requests), o_(o) {
    const Deployment& d = o.deployment;
    for (int32_t i = 0; i < d.n_prefill; ++i) AddNode(Role::kPrefill, &o.prefill, i);
    for (int32_t i = 0; i < d.n_decode; ++i) AddNode(Role::kDecode, &o.decode, i);
    for (int32_t i = 0; i < d.n_mixed; ++i) AddNode(Role::kMixed, &o.mixed, i);
    for (const Node& n : nodes_) co_run_ |= n.profile->step_co_run.has_value();
    co_run_ &= nodes_.size() > 1;
    state_.resize(reqs_.size());
    result_.requests.resize(reqs_.size());
  }

  SimResult Run() {
    for (size_t i = 0; i < reqs_.size(); ++i) {
      Push(reqs_[i].arrival_s, EventKind::kArrival, -1, static_cast<int32_t>(i));
    }
    while (!events_.empty()) {
      const Event e = events_.top();
      events_.pop();
      now_ = e.t;
      switch (e.kind) {
        case EventKind::kArrival:
          OnArrival(e.req);
          break;
        case EventKind::kAtNode:
          nodes_[e.node].prefill_queue.push_back(e.req);
          MaybeStart(e.node);
          break;
        case EventKind::kStepDone:
          if (e.version != nodes_[e.node].step_version) break;  // re-timed since
          OnStepDone(e.node);
          break;
        case EventKind::kKvReady:
          OnKvReady(e.node, e.req);
          break;
      }
    }
    return std::move(result_);
  }

 private:
  void AddNode(Role role, const DeviceProfile* p, int32_t index) {
    Node n;
    n.role = role;
    n.profile = p;
    n.index = index;
    n.free_blocks = p->kv_blocks;
    nodes_.push_back(std::move(n));
  }

  void Push(double t, EventKind kind, int32_t node, int32_t req, uint64_t version = 0) {
    events_.push(Event{t, next_seq_++, kind, node, req, version});
  }

  // The block size the router sizes requests with: the decode (or
  // colocated) pool's.
  int32_t BlockSize() const {
    return o_.deployment.disaggregated() ? o_.decode.block_size : o_.mixed.block_size;
  }
  int64_t NodeCapacity() const {
    return o_.deployment.disaggregated() ? o_.decode.kv_blocks : o_.mixed.kv_blocks;
  }

  void OnArrival(int32_t r) {
    RequestResult& res = result_.requests[r];
    res.arrival_s = reqs_[r].arrival_s;
    state_[r].blocks = BlocksNeeded(reqs_[r], BlockSize());
    if (state_[r].blocks > NodeCapacity()) {
      res.completed = false;  // the router rejects what no node can hold
      res.ttft_s = res.tpot_s = res.e2e_s = std::numeric_limits<double>::quiet_NaN();
      return;
    }
    queue_.push_back(r);
    Dispatch();
  }

  bool HasRoom(const Node& n, int64_t blocks) const { return n.free_blocks >= blocks; }

  // Dispatches queued requests, oldest first, while a node has room.
  void Dispatch() {
    while (!queue_.empty()) {
      const int32_t r = queue_.front();
      ReqState& s = state_[r];
      int32_t first = -1;  // the node the prompt goes to
      if (o_.deployment.disaggregated()) {
        int32_t best_d = -1, best_p = -1;
        for (int32_t i = 0; i < static_cast<int32_t>(nodes_.size()); ++i) {
          const Node& n = nodes_[i];
          if (n.role == Role::kDecode && HasRoom(n, s.blocks)) {
            if (best_d < 0 || n.free_blocks > nodes_[best_d].free_blocks ||
                (n.free_blocks == nodes_[best_d].free_blocks &&
                 n.inflight < nodes_[best_d].inflight)) {
              best_d = i;
            }
          } else if (n.role == Role::kPrefill) {
            if (best_p < 0 || n.unanswered_prompt_tokens < nodes_[best_p].unanswered_prompt_tokens)
              best_p = i;
          }
        }
        if (best_d < 0 || best_p < 0) return;
        s.prefill_node = first = best_p;
        s.decode_node = best_d;
      } else {
        // The router's rule (router/selection_policy.h): the least queued
        // prompt work, then the fewest requests, then the most free blocks.
        int32_t best = -1;
        for (int32_t i = 0; i < static_cast<int32_t>(nodes_.size()); ++i) {
          const Node& n = nodes_[i];
          if (!HasRoom(n, s.blocks)) continue;
          if (best < 0) {
            best = i;
            continue;
          }
          const Node& b = nodes_[best];
          if (n.unanswered_prompt_tokens < b.unanswered_prompt_tokens ||
              (n.unanswered_prompt_tokens == b.unanswered_prompt_tokens &&
               (n.inflight < b.inflight ||
                (n.inflight == b.inflight && n.free_blocks > b.free_blocks)))) {
            best = i;
          }
        }
        if (best < 0) return;
        s.decode_node = first = best;
      }
      queue_.pop_front();
      Node& d = nodes_[s.decode_node];
      d.free_blocks -= s.blocks;
      ++d.inflight;
      Node& p = nodes_[first];
      if (first != s.decode_node) ++p.inflight;
      // Prefix-cache hits: the node computes only the prompt's uncached tail.
      s.computed = reqs_[r].cached_tokens;
      p.unanswered_prompt_tokens += reqs_[r].input_tokens - reqs_[r].cached_tokens;
      RequestResult& res = result_.requests[r];
      res.dispatch_s = now_;
      res.node_prefill = o_.deployment.disaggregated() ? p.index : -1;
      res.node_decode = d.index;
      Push(now_ + p.profile->router_overhead_s, EventKind::kAtNode, first, r);
    }
  }

  void MaybeStart(int32_t ni) {
    Node& n = nodes_[ni];
    if (n.busy) return;
    const DeviceProfile& p = *n.profile;
    n.chunks.clear();
    n.decodes.clear();
    int64_t budget = p.max_batch_tokens;
    StepShape shape;
    // Decode tokens first (the engine's order), one per running sequence.
    if (n.role != Role::kPrefill) {
      for (int32_t r : n.running) {
        if (static_cast<int32_t>(n.decodes.size()) >= p.max_batch_seqs || budget <= 0) break;
        n.decodes.push_back(r);
        --budget;
        ++shape.decode_seqs;
        shape.decode_context += reqs_[r].input_tokens + state_[r].generated;
      }
    }
    // Then prompt chunks, oldest first, in what is left of the budget.
    if (n.role != Role::kDecode) {
      for (int32_t r : n.prefill_queue) {
        const int32_t items = static_cast<int32_t>(n.chunks.size() + n.decodes.size());
        if (budget <= 0 || items >= p.max_batch_seqs) break;
        const int32_t remaining = reqs_[r].input_tokens - state_[r].computed;
        const int32_t n_new = static_cast<int32_t>(std::min<int64_t>(remaining, budget));
        n.chunks.push_back(Chunk{r, n_new});
        budget -= n_new;
        shape.prefill_tokens += n_new;
        shape.attention_pairs += ChunkAttentionPairs(state_[r].computed, n_new);
      }
    }
    if (n.chunks.empty() && n.decodes.empty()) return;
    n.step_alone_s = std::max(p.step.Seconds(shape), 1e-9);
    if (shape.prefill_tokens == 0) {
      // One cache, taken by this node's prompt or another's: the larger
      // extra, not both. Another node's only while the host is otherwise
      // quiet: beside a computing node the co-run cost describes the step.
      double extra = 0;
      if (p.post_prefill.has_value()) {
        extra = p.post_prefill->ExtraSeconds(now_ - n.last_prefill_end_s, shape.decode_seqs);
      }
      if (p.post_peer_prefill.has_value() && co_run_ && !OtherBusy(ni)) {
        extra = std::max(
            extra, p.post_peer_prefill->ExtraSeconds(now_ - PeerPrefillEnd(ni), shape.decode_seqs));
      }
      n.step_alone_s += extra;
    }
    n.step_co_run_s = n.step_alone_s * CoRunSlowdown(p, shape);
    n.step_start_s = n.progress_at_s = now_;
    n.step_done_frac = 0;
    n.step_contended = OtherBusy(ni);
    n.busy = true;
    ++result_.steps;
    ++n.step_version;
    Push(now_ + (n.step_contended ? n.step_co_run_s : n.step_alone_s), EventKind::kStepDone, ni, -1,
         n.step_version);
    Retime(ni);
  }

  // When the last step with prefill tokens of a node other than `ni` ended.
  double PeerPrefillEnd(int32_t ni) const {
    double t = -std::numeric_limits<double>::infinity();
    for (int32_t i = 0; i < static_cast<int32_t>(nodes_.size()); ++i) {
      if (i != ni) t = std::max(t, nodes_[i].last_prefill_end_s);
    }
    return t;
  }

  // Nodes sharing a host (profiles with a co-run cost) slow each other:
  // true when a node other than `ni` is mid-step.
  bool OtherBusy(int32_t ni) const {
    if (!co_run_) return false;
    for (int32_t i = 0; i < static_cast<int32_t>(nodes_.size()); ++i) {
      if (i != ni && nodes_[i].busy) return true;
    }
    return false;
  }

  // Node `changed` started or ended a step: every other node mid-step whose
  // speed that changes is credited with what it computed so far and its
  // completion re-timed at the new speed.
  void Retime(int32_t changed) {
    if (!co_run_) return;
    for (int32_t i = 0; i < static_cast<int32_t>(nodes_.size()); ++i) {
      Node& n = nodes_[i];
      if (i == changed || !n.busy || n.step_co_run_s == n.step_alone_s) continue;
      const bool contended = OtherBusy(i);
      if (contended == n.step_contended) continue;
      n.step_done_frac +=
          (now_ - n.progress_at_s) / (n.step_contended ? n.step_co_run_s : n.step_alone_s);
      n.progress_at_s = now_;
      n.step_contended = contended;
      const double left =
          std::max(0.0, 1 - n.step_done_frac) * (contended ? n.step_co_run_s : n.step_alone_s);
      ++n.step_version;
      Push(now_ + left, EventKind::kStepDone, i, -1, n.step_version);
    }
  }

  // Layer l of a chunk is ready at (l+1)/n_layers of the step (evenly over
  // its wall time, stretched or not by a co-running node) and queues on the
  // node's link behind whatever is still in flight. Called as the step ends,
  // before its chunks are counted as computed.
  void ShipKv(Node* n) {
    const double start = n->step_start_s, dur = now_ - n->step_start_s;
    const DeviceProfile& p = *n->profile;
    const LinkModel& link = p.link;
    const int32_t layers = p.n_layers;
    for (const Chunk& c : n->chunks) {
      // A prompt's first chunk also carries its prefix-cache hits: the
      // decode node needs the whole prompt's KV.
      const int32_t cached = reqs_[c.req].cached_tokens;
      const int32_t tokens = c.n_new + (state_[c.req].computed == cached ? cached : 0);
      const double layer_s =
          static_cast<double>(p.kv_bytes_per_token) * tokens / layers / link.bandwidth_bytes_per_s;
      for (int32_t l = 0; l < layers; ++l) {
        const double ready = start + dur * (l + 1) / layers;
        n->link_free_s = std::max(ready, n->link_free_s) + layer_s;
      }
      state_[c.req].kv_ready_s = n->link_free_s + link.latency_s;
    }
  }

  void InsertRunning(Node* n, int32_t r) {
    n->running.insert(std::upper_bound(n->running.begin(), n->running.end(), r), r);
  }

  // Frees what request r holds on its decode (or colocated) node.
  void Release(int32_t r) {
    Node& d = nodes_[state_[r].decode_node];
    d.free_blocks += state_[r].blocks;
    --d.inflight;
    freed_ = true;
  }

  void Finish(int32_t r) {
    const ReqState& s = state_[r];
    RequestResult& res = result_.requests[r];
    res.completed = true;
    res.ttft_s = s.first_token_s - res.arrival_s;
    res.e2e_s = s.last_token_s - res.arrival_s;
    res.tpot_s = s.generated > 1 ? (s.last_token_s - s.first_token_s) / (s.generated - 1)
                                 : std::numeric_limits<double>::quiet_NaN();
    result_.end_s = std::max(result_.end_s, s.last_token_s);
  }

  void OnStepDone(int32_t ni) {
    Node& n = nodes_[ni];
    n.busy = false;
    if (!n.chunks.empty()) n.last_prefill_end_s = now_;
    Retime(ni);
    if (n.role == Role::kPrefill) ShipKv(&n);
    freed_ = false;
    for (int32_t r : n.decodes) {
      ReqState& s = state_[r];
      ++s.generated;
      result_.requests[r].itl_s.push_back(now_ - s.last_token_s);
      s.last_token_s = now_;
      if (s.generated >= reqs_[r].output_tokens) {
        Finish(r);
        n.running.erase(std::find(n.running.begin(), n.running.end(), r));
        Release(r);
      }
    }
    for (const Chunk& c : n.chunks) {
      ReqState& s = state_[c.req];
      s.computed += c.n_new;
      if (s.computed < reqs_[c.req].input_tokens) continue;
      n.prefill_queue.erase(std::find(n.prefill_queue.begin(), n.prefill_queue.end(), c.req));
      n.unanswered_prompt_tokens -= reqs_[c.req].input_tokens - reqs_[c.req].cached_tokens;
      s.generated = 1;  // token #1, sampled after the prompt's last chunk
      s.first_token_s = s.last_token_s = now_;
      const bool done = reqs_[c.req].output_tokens <= 1;
      if (done) Finish(c.req);
      if (n.role == Role::kPrefill) {
        --n.inflight;
        Push(s.kv_ready_s, EventKind::kKvReady, s.decode_node, c.req);
      } else if (done) {
        Release(c.req);
      } else {
        InsertRunning(&n, c.req);
      }
    }
    MaybeStart(ni);
    if (freed_) Dispatch();
  }

  void OnKvReady(int32_t ni, int32_t r) {
    freed_ = false;
    if (state_[r].generated >= reqs_[r].output_tokens) {
      Release(r);  // one output token: the decode node only held the blocks
      Dispatch();
      return;
    }
    InsertRunning(&nodes_[ni], r);
    MaybeStart(ni);
  }

  const std::vector<SimRequest>& reqs_;
  const SimOptions& o_;
  std::vector<Node> nodes_;
  std::vector<ReqState> state_;
  std::deque<int32_t> queue_;  // the router's
  std::priority_queue<Event, std::vector<Event>, Later> events_;
  uint64_t next_seq_ = 0;
  double now_ = 0;
  bool freed_ = false;
  bool co_run_ = false;  // some node's profile has a co-run cost, and there are 2+ nodes
  SimResult result_;
};

}  // namespace

int64_t BlocksNeeded(const SimRequest& r, int32_t block_size) {
  const int64_t tokens = static_cast<int64_t>(r.input_tokens) + r.output_tokens;
  return (tokens + block_size - 1) / block_size;
}

absl::StatusOr<SimResult> Simulate(const std::vector<SimRequest>& requests, const SimOptions& o) {
  const Deployment& d = o.deployment;
  if (d.n_prefill < 0 || d.n_decode < 0 || d.n_mixed < 0 ||
      !((d.n_mixed > 0 && d.n_prefill == 0 && d.n_decode == 0) ||
        (d.n_mixed == 0 && d.n_prefill > 0 && d.n_decode > 0))) {
    return absl::InvalidArgumentError(
        absl::StrCat("deployment needs prefill and decode nodes, or colocated nodes only; got ",
                     d.n_prefill, "P ", d.n_decode, "D ", d.n_mixed, " colocated"));
  }
  const std::vector<const DeviceProfile*> used =
      d.disaggregated() ? std::vector<const DeviceProfile*>{&o.prefill, &o.decode}
                        : std::vector<const DeviceProfile*>{&o.mixed};
  for (const DeviceProfile* p : used) {
    if (absl::Status s = p->Validate(); !s.ok()) return s;
  }
  double prev = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const SimRequest& r = requests[i];
    if (!std::isfinite(r.arrival_s) || r.arrival_s < prev) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": arrival ", r.arrival_s, " s is not finite and in order"));
    }
    if (r.input_tokens < 1 || r.output_tokens < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": input and output tokens must be >= 1"));
    }
    if (r.cached_tokens < 0 || r.cached_tokens >= r.input_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": cached tokens ",
                                                     r.cached_tokens, " not in [0, input tokens ",
                                                     r.input_tokens, ")"));
    }
    prev = r.arrival_s;
  }
  return Sim(requests, o).Run();
}

}  // namespace pdserve::planner
