#include "router/placement.h"

#include <utility>

namespace pdserve::router {

Placement Placement::Reserve(NodeRegistry* registry, const Selection& selection, int32_t blocks,
                             int64_t prefill_tokens) {
  Placement p;
  p.registry_ = registry;
  p.blocks_ = blocks;
  const std::optional<NodeView>& decode = selection.mixed ? selection.mixed : selection.decode;
  if (decode) {
    p.decode_id_ = decode->id;
    p.decode_epoch_ = decode->epoch;
    // A mixed node computes the prompt too: counted until its first token.
    p.mixed_ = selection.mixed.has_value();
    p.prefill_tokens_ = p.mixed_ ? prefill_tokens : 0;
    registry->AddWork(p.decode_id_, p.decode_epoch_, blocks, p.prefill_tokens_);
    p.decode_held_ = true;
    p.prefill_held_ = p.mixed_;
  }
  if (!selection.mixed && selection.prefill) {
    p.prefill_id_ = selection.prefill->id;
    p.prefill_epoch_ = selection.prefill->epoch;
    p.prefill_tokens_ = prefill_tokens;
    registry->AddWork(p.prefill_id_, p.prefill_epoch_, 0, prefill_tokens);
    p.prefill_held_ = true;
  }
  return p;
}

Placement::Placement(Placement&& other) noexcept { *this = std::move(other); }

Placement& Placement::operator=(Placement&& other) noexcept {
  if (this == &other) return *this;
  Release();
  registry_ = other.registry_;
  prefill_id_ = std::move(other.prefill_id_);
  decode_id_ = std::move(other.decode_id_);
  prefill_epoch_ = other.prefill_epoch_;
  decode_epoch_ = other.decode_epoch_;
  blocks_ = other.blocks_;
  prefill_tokens_ = other.prefill_tokens_;
  mixed_ = other.mixed_;
  prefill_held_ = std::exchange(other.prefill_held_, false);
  decode_held_ = std::exchange(other.decode_held_, false);
  return *this;
}

void Placement::ReleasePrefill() {
  if (!prefill_held_) return;
  prefill_held_ = false;
  if (mixed_) {
    registry_->DonePrefill(decode_id_, decode_epoch_, prefill_tokens_);
  } else {
    registry_->DonePrefill(prefill_id_, prefill_epoch_, prefill_tokens_);
  }
}

void Placement::ReleaseDecode() {
  if (!decode_held_) return;
  decode_held_ = false;
  registry_->DoneWork(decode_id_, decode_epoch_, blocks_);
}

}  // namespace pdserve::router
