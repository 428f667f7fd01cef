// The planner's device profile: what one node costs per engine step, how much
// KV it holds, and the link its KV travels over. Plain structs, fitted from
// measurements (`pdserve bench --profile`) or written from published figures.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace pdserve::planner {

// What one engine step computes: prefill chunks and decode tokens of many
// sequences in one flat batch (continuous batching).
struct StepShape {
  int64_t prefill_tokens = 0;  // prompt tokens computed this step
  double attention_pairs = 0;  // sum over prefill tokens of the positions each attends to
  int32_t decode_seqs = 0;     // sequences that produce one token each
  int64_t decode_context = 0;  // sum of the decode sequences' context lengths
};

// Attention pairs of a prefill chunk of `n_new` tokens after `n_past`
// already computed: token i (1-based) attends to n_past + i positions.
double ChunkAttentionPairs(int64_t n_past, int64_t n_new);

// Seconds per step, linear in the shape:
//   base + prefill_token * P + attention_pair * A + decode_seq * D + decode_context_token * K
// base is the fixed cost of a step (weights read once, launch and sync);
// prefill is compute-bound (P, plus A for attention, quadratic in the
// prompt); decode adds per sequence (D) and per cached token read (K).
struct StepCost {
  double base_s = 0;
  double prefill_token_s = 0;
  double attention_pair_s = 0;
  double decode_seq_s = 0;
  double decode_context_token_s = 0;

  double Seconds(const StepShape& shape) const;
};

// One measured step, for fitting.
struct StepSample {
  StepShape shape;
  double seconds = 0;
};

// Least squares over the samples with every coefficient >= 0 (a negative
// one is dropped and the rest refitted). Needs at least as many samples as
// coefficients, with prefill and decode steps among them.
absl::StatusOr<StepCost> FitStepCost(const std::vector<StepSample>& samples);

// Decode steps after a prefill. On the CPUs measured (docs/performance.md,
// "Disaggregated vs colocated under load"), a node's memory-bound decode
// steps (small batches) run slower for a few hundred milliseconds after it
// computed a prompt, by about the same time whatever the context, and reach
// their steady cost as that fades; large, compute-bound batches do not.
// A decode-only step of at most max_decode_seqs sequences that starts
// `since_s` seconds after the end of the node's last step with prefill
// tokens costs
//   steady + excess_s × exp(-since_s / decay_s).
// A node that never prefills (a decode node) runs at the steady cost.
struct PostPrefillCost {
  double excess_s = 0;          // extra seconds right after a prefill (>= 0)
  double decay_s = 1;           // time constant of its fading (> 0)
  int32_t max_decode_seqs = 0;  // the largest batch it was measured at

  double ExtraSeconds(double since_s, int32_t decode_seqs) const;
};

// One decode-only step timed right after a prefill, for fitting
// PostPrefillCost, with the steady time of the same configuration.
struct PostPrefillSample {
  StepShape shape;
  double since_s = 0;   // from the end of the prefill to the start of this step
  double seconds = 0;   // measured
  double steady_s = 0;  // the same batch's steps timed once the effect faded
};

// Fits PostPrefillCost to steps timed after a prefill: each batch size's
// extra time (seconds - steady_s) on its own first; max_decode_seqs is the
// largest batch such that it and every smaller one measured show an extra
// of at least 10% of their steady time right after the prefill; then
// excess_s and decay_s by least squares over those batches (decay_s on a
// log grid from 1 ms up to the largest since_s, at most 10 s: a slower fade
// cannot be told from drift within the window). No batch showing it:
// excess_s 0.
absl::StatusOr<PostPrefillCost> FitPostPrefillCost(const std::vector<PostPrefillSample>& samples);

// The link KV travels over from a prefill node to a decode node.
struct LinkModel {
  double bandwidth_bytes_per_s = 1e9;
  double latency_s = 0;
};

struct DeviceProfile {
  std::string name;     // e.g. "cpu-2t SmolLM2-135M Q4_1"
  std::string source;   // how the figures were obtained (measurement, citations)
  std::string model;    // the model the figures are for
  int32_t threads = 0;  // CPU threads per node the figures were measured with (0: n/a)
  int32_t n_layers = 1;
  int64_t kv_bytes_per_token = 0;  // all layers, K and V
  int32_t block_size = 16;
  int64_t kv_blocks = 0;           // KV capacity of one node, in blocks
  int32_t max_batch_tokens = 512;  // token budget per step (chunked prefill)
  int32_t max_batch_seqs = 64;
  StepCost step;  // the node with its host to itself
  // The same node's steps while another node of the deployment computes on
  // the same host (CPU nodes pinned to cores of one machine share its L3
  // and memory bandwidth): measured with a representative load on the
  // host's other cores (`pdserve bench --profile ... --profile-alone`).
  // Absent: nodes do not slow each other (separate devices or hosts).
  std::optional<StepCost> step_co_run;
  std::string co_run_source;  // how step_co_run was measured
  // Absent: decode steps cost the same whenever the node last prefilled
  // (a published GPU profile, or one measured before this term existed).
  std::optional<PostPrefillCost> post_prefill;
  std::string post_prefill_source;  // how post_prefill was measured
  // The same after another node's prefill on the host: nodes of one host
  // share its last-level cache, and another node's prompt leaves this
  // node's weights out of it (on the 2-vCPU Xeon VM, a decode node's
  // batch-1 steps ran about 2x their steady time after the prefill node's
  // 512-token prompt, back to it over 5-20 steps). Applied, as step_co_run,
  // only between nodes of a deployment whose profiles have a co-run cost
  // (nodes sharing a host); since_s counts from the end of the last step
  // with prefill tokens of any other node, and a step pays the larger of
  // this and post_prefill. Absent: another node's prefill costs nothing
  // after it ends.
  std::optional<PostPrefillCost> post_peer_prefill;
  std::string post_peer_prefill_source;  // how post_peer_prefill was measured
  LinkModel link;
  double router_overhead_s = 0;  // router + RPC time from arrival to a node's queue
  nlohmann::json notes = nlohmann::json::object();  // citations, fit residuals: free form

  absl::Status Validate() const;
};

// How many times longer a step of this shape takes beside a computing
// node than alone: step_co_run / step, at least 1 (1 without step_co_run).
// The simulator runs a step at 1/slowdown of its alone speed for as long as
// another node is mid-step.
double CoRunSlowdown(const DeviceProfile& profile, const StepShape& shape);

nlohmann::ordered_json ProfileToJson(const DeviceProfile& profile);
absl::StatusOr<DeviceProfile> ProfileFromJson(const nlohmann::json& json);
absl::StatusOr<DeviceProfile> LoadProfile(const std::string& path);
absl::Status SaveProfile(const DeviceProfile& profile, const std::string& path);

}  // namespace pdserve::planner
