#include "router/selection_policy.h"

#include <algorithm>

namespace pdserve::router {
namespace {

// Draining, failed at the transport, or stalled: no new work.
bool OutOfRotation(const NodeView& n) {
  return n.load.draining() || n.suspect || n.load.stalled_ms() > 0;
}

bool HasRoom(const NodeView& n, const RequestShape& r) {
  return !OutOfRotation(n) && n.free_blocks() >= r.blocks_needed;
}

// Prompt tokens a prefill node still has to compute, counting this one.
int64_t PrefillCost(const NodeView& n, const RequestShape& r, int32_t block_size) {
  const int64_t saved = static_cast<int64_t>(n.prefix_hits) * block_size;
  return n.load.queued_prefill_tokens() + n.inflight_prefill_tokens + r.prompt_tokens - saved;
}

}  // namespace

Selection LeastLoadedPolicy::Select(const RequestShape& r, const std::vector<NodeView>& nodes) {
  if (!r.avoid_nodes.empty()) {
    // Leave out an avoided node only where its role has another node.
    auto avoided = [&](const NodeView& n) {
      return std::find(r.avoid_nodes.begin(), r.avoid_nodes.end(), n.id) != r.avoid_nodes.end();
    };
    std::vector<NodeView> others;
    for (const NodeView& n : nodes) {
      const bool alternative = std::any_of(nodes.begin(), nodes.end(), [&](const NodeView& m) {
        return m.role == n.role && !avoided(m) && !OutOfRotation(m);
      });
      if (!avoided(n) || !alternative) others.push_back(n);
    }
    Selection sel = SelectAmong(r, others);
    if (sel.ok()) return sel;
  }
  return SelectAmong(r, nodes);
}

Selection LeastLoadedPolicy::SelectAmong(const RequestShape& r,
                                         const std::vector<NodeView>& nodes) {
  Selection sel;
  const NodeView* best_decode = nullptr;
  const NodeView* best_prefill = nullptr;
  const NodeView* best_mixed = nullptr;
  const int32_t bs = r.block_size;
  for (const NodeView& n : nodes) {
    switch (n.role) {
      case v1::NODE_ROLE_DECODE:
        if (!HasRoom(n, r)) break;
        if (!best_decode || n.free_blocks() > best_decode->free_blocks() ||
            (n.free_blocks() == best_decode->free_blocks() &&
             n.inflight_requests < best_decode->inflight_requests)) {
          best_decode = &n;
        }
        break;
      case v1::NODE_ROLE_PREFILL:
        if (OutOfRotation(n)) break;
        if (!best_prefill || PrefillCost(n, r, bs) < PrefillCost(*best_prefill, r, bs)) {
          best_prefill = &n;
        }
        break;
      case v1::NODE_ROLE_MIXED: {
        if (!HasRoom(n, r)) break;
        if (!best_mixed) {
          best_mixed = &n;
          break;
        }
        const int64_t cost = PrefillCost(n, r, bs), best_cost = PrefillCost(*best_mixed, r, bs);
        if (cost < best_cost ||
            (cost == best_cost && (n.inflight_requests < best_mixed->inflight_requests ||
                                   (n.inflight_requests == best_mixed->inflight_requests &&
                                    n.free_blocks() > best_mixed->free_blocks())))) {
          best_mixed = &n;
        }
        break;
      }
      default:
        break;
    }
  }
  if (best_prefill && best_decode) {
    sel.prefill = *best_prefill;
    sel.decode = *best_decode;
  } else if (best_mixed) {
    sel.mixed = *best_mixed;
  }
  return sel;
}

}  // namespace pdserve::router
