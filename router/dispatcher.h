// The router's bounded queue of requests waiting for nodes. A request leaves
// it when the selection policy finds a prefill+decode pair (or a mixed node)
// with room; capacity is re-checked whenever it may have grown (a request
// finished, a node registered or reported its load).
#pragma once

#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "router/router_context.h"

namespace pdserve::router {

class Dispatcher {
 public:
  // Starts the dispatch thread; the destructor stops it.
  Dispatcher(RouterContext* ctx, std::unique_ptr<SelectionPolicy> policy);
  ~Dispatcher();

  // Queues a call, or says why not: RESOURCE_EXHAUSTED (more than
  // max_queue requests would have to wait for capacity; one that can be
  // placed now is always taken, even with max_queue 0), UNAVAILABLE (no
  // node of a needed role), INVALID_ARGUMENT (the request can never fit any
  // node). Call it without holding any GenerateCall's lock: it may start
  // node calls.
  absl::Status Enqueue(std::shared_ptr<GenerateCall> call);
  // Drops a queued call (cancelled); false if it was not queued.
  bool Remove(const GenerateCall* call);
  // Asks the dispatch thread to look at the queue again (capacity may have
  // grown). Cheap and safe to call from anywhere, under any lock.
  void Pump();

  int32_t queued() const;

 private:
  RouterContext* ctx_;
  std::unique_ptr<SelectionPolicy> policy_;
  // Dispatches what fits now, oldest first; fails calls that waited too
  // long. Runs on the dispatch thread, or in Enqueue when the queue is over
  // its bound; never under a caller's lock, so node calls start without one.
  void DispatchReady();
  void Loop();

  absl::Mutex dispatch_mu_;  // held for a whole DispatchReady; before mu_
  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<GenerateCall>> queue_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace pdserve::router
