// Chooses the nodes for a request. A small interface so deployments can
// swap the rule; the router times every decision (pdserve:router_selection
// in the logs and metrics).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "router/node_registry.h"

namespace pdserve::router {

struct RequestShape {
  int32_t prompt_tokens = 0;
  int32_t blocks_needed = 0;  // KV blocks the request may grow to on a decode node
  int32_t block_size = 16;
  std::vector<uint64_t> prefix_hashes;  // full-block hash chain of the prompt
  // Nodes of a failed earlier attempt: taken only when no other node fits
  // (the failure may not have shown on their own channel yet).
  std::vector<std::string> avoid_nodes;
};

struct Selection {
  // Disaggregated: both set. Colocated: only `mixed`.
  std::optional<NodeView> prefill;
  std::optional<NodeView> decode;
  std::optional<NodeView> mixed;
  bool ok() const { return (prefill && decode) || mixed; }
};

class SelectionPolicy {
 public:
  virtual ~SelectionPolicy() = default;
  // `nodes` carries prefix_hits already filled for prefill-capable nodes.
  // Returns an empty selection when no node can take the request now.
  virtual Selection Select(const RequestShape& request, const std::vector<NodeView>& nodes) = 0;
};

// The default rule:
//   decode: among decode nodes with room for the request's blocks, the one
//           with the most free blocks (ties: fewer running sequences);
//   prefill: the one with the least queued prefill work, counting prompt
//           tokens its prefix cache would save;
//   prefers a prefill+decode pair when both pools exist, else a mixed node
//   with room: the one with the least queued prefill work, as for prefill
//   (a prompt queued behind another waits its whole prefill, while one more
//   decoding sequence costs the others a little), then the fewest requests,
//   then the most free blocks;
//   never a node that is draining, stalled (NodeLoad.stalled_ms) or out of
//   rotation after a transport failure (NodeView.suspect).
class LeastLoadedPolicy : public SelectionPolicy {
 public:
  Selection Select(const RequestShape& request, const std::vector<NodeView>& nodes) override;

 private:
  Selection SelectAmong(const RequestShape& request, const std::vector<NodeView>& nodes);
};

}  // namespace pdserve::router
