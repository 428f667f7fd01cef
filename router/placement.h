// The capacity the dispatcher reserved for one dispatch of a request: prompt
// tokens on the prefill node (on a mixed node, on that node), KV blocks on
// the decode (or mixed) node, each counted in the registration (epoch) it
// was reserved in. A Placement gives each back exactly once: the prefill
// tokens when the prefill node replied or the mixed node sent its first
// token (ReleasePrefill), the blocks when the request leaves the decode node
// (ReleaseDecode), and whatever is left when it is destroyed. Moving it moves
// the reservation. Not thread-safe: its owner (a GenerateCall's attempt)
// serializes access.
#pragma once

#include <cstdint>
#include <string>

#include "router/node_registry.h"
#include "router/selection_policy.h"

namespace pdserve::router {

class Placement {
 public:
  Placement() = default;  // holds nothing
  // Reserves `blocks` on the decode (or mixed) node and `prefill_tokens`
  // on the prefill (or mixed) node of `selection`.
  static Placement Reserve(NodeRegistry* registry, const Selection& selection, int32_t blocks,
                           int64_t prefill_tokens);
  Placement(Placement&& other) noexcept;
  Placement& operator=(Placement&& other) noexcept;
  Placement(const Placement&) = delete;
  Placement& operator=(const Placement&) = delete;
  ~Placement() { Release(); }

  // Idempotent; each gives its part back once.
  void ReleasePrefill();
  void ReleaseDecode();
  void Release() {
    ReleasePrefill();
    ReleaseDecode();
  }

  bool mixed() const { return mixed_; }
  // Empty for a mixed placement.
  const std::string& prefill_id() const { return prefill_id_; }
  // The decode node, or the mixed node.
  const std::string& decode_id() const { return decode_id_; }
  uint64_t prefill_epoch() const { return prefill_epoch_; }
  uint64_t decode_epoch() const { return decode_epoch_; }
  bool holds_prefill() const { return prefill_held_; }
  bool holds_decode() const { return decode_held_; }

 private:
  NodeRegistry* registry_ = nullptr;
  std::string prefill_id_, decode_id_;
  uint64_t prefill_epoch_ = 0, decode_epoch_ = 0;
  int32_t blocks_ = 0;
  int64_t prefill_tokens_ = 0;
  bool prefill_held_ = false, decode_held_ = false;
  bool mixed_ = false;
};

}  // namespace pdserve::router
