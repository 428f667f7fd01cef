#include "router/dispatcher.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "router/generate_call.h"
#include "router/placement.h"

namespace pdserve::router {

Dispatcher::Dispatcher(RouterContext* ctx, std::unique_ptr<SelectionPolicy> policy)
    : ctx_(ctx), policy_(std::move(policy)) {
  thread_ = std::thread([this] { Loop(); });
}

Dispatcher::~Dispatcher() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void Dispatcher::Pump() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void Dispatcher::Loop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stop_; };
      // The timeout also expires requests that waited too long.
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(50));
      if (stop_) return;
      wake_ = false;
    }
    DispatchReady();
  }
}

absl::Status Dispatcher::Enqueue(std::shared_ptr<GenerateCall> call) {
  const bool pairs = ctx_->registry->HasRole(v1::NODE_ROLE_PREFILL) &&
                     ctx_->registry->HasRole(v1::NODE_ROLE_DECODE);
  const bool mixed = ctx_->registry->HasRole(v1::NODE_ROLE_MIXED);
  if (!pairs && !mixed) {
    return absl::UnavailableError(
        "no node can serve this request now (the router needs a prefill and a decode node, "
        "or a mixed node)");
  }
  // A request larger than any node's whole cache would wait forever.
  int32_t largest = 0;
  for (const NodeView& n : ctx_->registry->Snapshot()) {
    if (n.role == v1::NODE_ROLE_DECODE || n.role == v1::NODE_ROLE_MIXED) {
      largest = std::max(largest, n.load.total_kv_blocks());
    }
  }
  if (call->shape().blocks_needed > largest) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", call->shape().prompt_tokens, " tokens) plus max_tokens needs ",
                     call->shape().blocks_needed, " KV blocks; the largest node holds ", largest));
  }
  const GenerateCall* raw = call.get();
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(call));
    if (static_cast<int32_t>(queue_.size()) <= ctx_->config.max_queue) return absl::OkStatus();
  }
  // Over the bound. Only requests that must wait for capacity count against
  // it, so place what fits now first (requests that arrived in a burst
  // before the dispatch thread woke, or this one with --max-queue 0), then
  // refuse this one if it would still have to wait past the bound.
  DispatchReady();
  absl::MutexLock lock(&mu_);
  auto it =
      std::find_if(queue_.begin(), queue_.end(), [raw](const auto& c) { return c.get() == raw; });
  if (it != queue_.end() && static_cast<int32_t>(queue_.size()) > ctx_->config.max_queue) {
    queue_.erase(it);
    return absl::ResourceExhaustedError(
        absl::StrCat("the router's queue is full (", ctx_->config.max_queue, " requests waiting)"));
  }
  return absl::OkStatus();
}

bool Dispatcher::Remove(const GenerateCall* call) {
  absl::MutexLock lock(&mu_);
  auto it =
      std::find_if(queue_.begin(), queue_.end(), [call](const auto& c) { return c.get() == call; });
  if (it == queue_.end()) return false;
  queue_.erase(it);
  return true;
}

int32_t Dispatcher::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int32_t>(queue_.size());
}

void Dispatcher::DispatchReady() {
  // One placement at a time: two concurrent selections could both give the
  // same node's last free blocks away.
  absl::MutexLock dispatch_lock(&dispatch_mu_);
  for (;;) {
    std::shared_ptr<GenerateCall> call;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) return;
      call = queue_.front();
    }
    const int64_t now = MonoNowNs();
    if (now - call->arrival_ns() > ctx_->config.queue_timeout_ms * 1000000) {
      if (Remove(call.get())) {
        call->FailQueued(
            absl::ResourceExhaustedError(absl::StrCat("no node had room for this request within ",
                                                      ctx_->config.queue_timeout_ms, " ms")),
            tracing::ErrorKind::kOverloaded);
      }
      continue;
    }
    const int64_t t0 = MonoNowNs();
    std::vector<NodeView> nodes = ctx_->registry->Snapshot();
    for (NodeView& n : nodes) {
      if (n.role == v1::NODE_ROLE_PREFILL || n.role == v1::NODE_ROLE_MIXED) {
        n.prefix_hits = ctx_->registry->CountPrefixHits(n.id, call->shape().prefix_hashes);
      }
    }
    const Selection sel = policy_->Select(call->shape(), nodes);
    const int64_t cost_ns = MonoNowNs() - t0;
    if (ctx_->selection_seconds) ctx_->selection_seconds->Observe(cost_ns * 1e-9);
    if (!sel.ok()) return;  // oldest first: wait for capacity
    PDS_LOG(DEBUG) << call->id() << ": selected "
                   << (sel.mixed ? sel.mixed->id : sel.prefill->id + " -> " + sel.decode->id)
                   << " in " << cost_ns / 1000.0 << " us over " << nodes.size() << " nodes";
    if (!Remove(call.get())) continue;  // cancelled meanwhile
    // The call owns the reservation from here: it gives it back exactly once.
    call->Dispatch(sel, Placement::Reserve(ctx_->registry, sel, call->shape().blocks_needed,
                                           call->shape().prompt_tokens));
  }
}

}  // namespace pdserve::router
