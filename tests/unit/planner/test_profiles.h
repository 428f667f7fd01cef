// Profiles with round numbers, so the tests' expected times can be worked
// out by hand.
#pragma once

#include "planner/cost_model.h"

namespace pdserve::planner {

// A step costs 10 ms + 1 ms per prompt token + 2 ms per decode sequence; the
// link is (practically) infinitely fast; the router adds nothing.
inline DeviceProfile HandProfile() {
  DeviceProfile p;
  p.name = "hand";
  p.n_layers = 4;
  p.kv_bytes_per_token = 1000;
  p.block_size = 16;
  p.kv_blocks = 1 << 20;
  p.max_batch_tokens = 100;
  p.max_batch_seqs = 64;
  p.step.base_s = 0.010;
  p.step.prefill_token_s = 0.001;
  p.step.decode_seq_s = 0.002;
  p.link.bandwidth_bytes_per_s = 1e18;
  p.link.latency_s = 0;
  p.router_overhead_s = 0;
  return p;
}

}  // namespace pdserve::planner
