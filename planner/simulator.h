// A deterministic discrete-event simulation of a pdserve cluster:
//
//   router   FCFS queue; a request leaves it when the least-loaded rule of
//            router/selection_policy.cc finds a decode node with room for
//            all the KV blocks it may grow to (the router reserves them) and
//            the prefill node with the fewest queued prompt tokens, or a
//            colocated node with the fewest prompt tokens not answered yet
//            (then the fewest requests in flight, then the most room);
//   prefill  engine steps of prompt chunks, oldest first, under the token
//            budget (max_batch_tokens) and max_batch_seqs; token #1 when a
//            prompt's last chunk is done; each chunk's KV leaves layer by
//            layer as the step computes it, over the node's one link, so
//            only the tail of the last layer is exposed;
//   decode   continuous batching: every sequence whose KV has landed gets
//            one token per step (up to max_batch_seqs, oldest first);
//   colocated the engine's scheduler: decode tokens first, then prompt
//            chunks in the rest of the budget (chunked prefill).
//   step     time from the profile's cost model: base, prompt tokens,
//            attention pairs, decode sequences and the KV tokens they
//            attend (context); with a co-run cost (nodes sharing one host),
//            a step runs at 1/CoRunSlowdown of its speed for as long as
//            another node is mid-step, and is re-timed when that changes;
//            with a post-prefill cost, a small decode-only step costs
//            PostPrefillCost::ExtraSeconds(time since the node's last step
//            with prefill tokens ended) more than its steady cost; with a
//            co-run cost and a post-peer-prefill cost, a step that starts
//            while no other node is mid-step pays the larger of that and
//            post_peer_prefill's extra since the last such step of any
//            other node (the host's cache that node's prompt took).
//
// Time is in seconds from the first arrival's origin (0). Ties between
// events are broken by insertion order, so a run is a pure function of its
// inputs.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "planner/cost_model.h"
#include "planner/deployment.h"

namespace pdserve::planner {

struct SimRequest {
  double arrival_s = 0;
  int32_t input_tokens = 1;
  int32_t output_tokens = 1;  // generated exactly (EOS ignored)
  // Leading prompt tokens already in the first node's prefix cache (a
  // prompt sent before): the node computes only the rest, and a prefill
  // node still ships the whole prompt's KV. 0 <= cached < input_tokens (the
  // engine always computes the last prompt token).
  int32_t cached_tokens = 0;
};

struct SimOptions {
  Deployment deployment;
  DeviceProfile prefill;  // profile of each prefill node
  DeviceProfile decode;   // of each decode node
  DeviceProfile mixed;    // of each colocated node
};

struct RequestResult {
  bool completed = false;  // false: it can never fit a node's KV cache (rejected)
  double arrival_s = 0;
  double dispatch_s = 0;  // left the router queue
  double ttft_s = 0;
  double tpot_s = 0;  // mean gap after token #1; NaN with one output token
  double e2e_s = 0;
  std::vector<double> itl_s;  // gaps between consecutive tokens
  int32_t node_prefill = -1;  // which nodes served it (index within the pool)
  int32_t node_decode = -1;   // decode or colocated node
};

struct SimResult {
  std::vector<RequestResult> requests;  // in input order
  double end_s = 0;                     // when the last request finished
  int64_t steps = 0;                    // engine steps over all nodes
};

// Requests must be sorted by arrival. InvalidArgument for a bad profile,
// deployment or request.
absl::StatusOr<SimResult> Simulate(const std::vector<SimRequest>& requests,
                                   const SimOptions& options);

// KV blocks a request may grow to: prompt plus output, rounded up.
int64_t BlocksNeeded(const SimRequest& request, int32_t block_size);

}  // namespace pdserve::planner
