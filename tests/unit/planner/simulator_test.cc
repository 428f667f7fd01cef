#include "planner/simulator.h"

#include <cmath>

#include "gtest/gtest.h"
#include "loadgen/arrivals.h"
#include "tests/unit/planner/test_profiles.h"

namespace pdserve::planner {
namespace {

constexpr double kEps = 1e-9;

SimOptions Disaggregated(const DeviceProfile& p, int32_t n_prefill = 1, int32_t n_decode = 1) {
  SimOptions o;
  o.deployment = Deployment{n_prefill, n_decode, 0};
  o.prefill = o.decode = o.mixed = p;
  return o;
}

SimOptions Colocated(const DeviceProfile& p, int32_t n = 1) {
  SimOptions o;
  o.deployment = Deployment{0, 0, n};
  o.prefill = o.decode = o.mixed = p;
  return o;
}

// One server with a constant service time: a prefill node that takes one
// prompt per step (max_batch_seqs 1) and whose step costs `service_s`
// whatever the prompt; token #1 ends the request, so TTFT = wait + service.
SimOptions SingleServer(double service_s) {
  DeviceProfile p = HandProfile();
  p.step = StepCost{};
  p.step.base_s = service_s;
  p.max_batch_seqs = 1;
  return Disaggregated(p);
}

double MeanWait(const SimResult& r, double service_s) {
  double sum = 0;
  for (const RequestResult& q : r.requests) sum += q.ttft_s - service_s;
  return sum / static_cast<double>(r.requests.size());
}

std::vector<SimRequest> PoissonRequests(double rate, int n, uint64_t seed) {
  loadgen::ArrivalProcess arrivals(rate, /*burstiness=*/1.0, seed);
  std::vector<SimRequest> out;
  double t = 0;
  for (int i = 0; i < n; ++i) {
    if (i > 0) t += arrivals.NextIntervalS();
    out.push_back(SimRequest{t, 16, 1});
  }
  return out;
}

// M/D/1: Poisson arrivals, constant service S, one server. Pollaczek-Khinchine
// gives the mean wait in queue W = rho * S / (2 (1 - rho)).
void ExpectMd1(double rho, int n, double tolerance) {
  const double service = 0.1;
  const std::vector<SimRequest> requests = PoissonRequests(rho / service, n, 7);
  absl::StatusOr<SimResult> r = Simulate(requests, SingleServer(service));
  ASSERT_TRUE(r.ok()) << r.status();
  const double expected = rho * service / (2 * (1 - rho));
  EXPECT_NEAR(MeanWait(*r, service), expected, tolerance * expected) << "rho " << rho;
}

TEST(SimulatorTest, Md1MeanWaitMatchesPollaczekKhinchineAtHalfLoad) {
  ExpectMd1(0.5, 100000, 0.04);
}

TEST(SimulatorTest, Md1MeanWaitMatchesPollaczekKhinchineAtHighLoad) {
  ExpectMd1(0.8, 200000, 0.05);
}

// D/D/1 below capacity: nobody waits.
TEST(SimulatorTest, Dd1BelowCapacityNeverQueues) {
  std::vector<SimRequest> requests;
  for (int i = 0; i < 100; ++i) requests.push_back(SimRequest{0.2 * i, 16, 1});
  absl::StatusOr<SimResult> r = Simulate(requests, SingleServer(0.15));
  ASSERT_TRUE(r.ok()) << r.status();
  for (const RequestResult& q : r->requests) EXPECT_NEAR(q.ttft_s, 0.15, kEps);
}

// D/D/1 above capacity: request k arrives at k*T and starts at k*S, so it
// waits k*(S-T); the queue grows without bound.
TEST(SimulatorTest, Dd1AboveCapacityWaitGrowsLinearly) {
  const double period = 0.1, service = 0.15;
  std::vector<SimRequest> requests;
  for (int i = 0; i < 50; ++i) requests.push_back(SimRequest{period * i, 16, 1});
  absl::StatusOr<SimResult> r = Simulate(requests, SingleServer(service));
  ASSERT_TRUE(r.ok()) << r.status();
  for (int k = 0; k < 50; ++k) {
    EXPECT_NEAR(r->requests[k].ttft_s, k * (service - period) + service, 1e-9) << k;
  }
}

// A hand-worked 1P1D trace (step = 10 ms + 1 ms per prompt token + 2 ms per
// decode sequence; budget 100 tokens; instant link):
//   A: t=0,    50 in, 3 out     B: t=0.02, 80 in, 2 out     C: t=0.03, 30 in, 1 out
// prefill node:
//   [0, 0.06)     A's 50 tokens (10 + 50 ms)            -> A token #1 at 0.06
//   [0.06, 0.17)  B's 80 + C's first 20 (10 + 100 ms)   -> B token #1 at 0.17
//   [0.17, 0.19)  C's last 10 (10 + 10 ms)              -> C token #1 at 0.19 (done)
// decode node (one sequence: 12 ms a step):
//   [0.06, 0.072) A #2   [0.072, 0.084) A #3 (done)   [0.17, 0.182) B #2 (done)
// So TTFT A 0.06, B 0.15, C 0.16; TPOT A (0.084-0.06)/2 = 0.012, B 0.012.
TEST(SimulatorTest, HandComputedDisaggregatedTrace) {
  const std::vector<SimRequest> requests = {{0.0, 50, 3}, {0.02, 80, 2}, {0.03, 30, 1}};
  absl::StatusOr<SimResult> r = Simulate(requests, Disaggregated(HandProfile()));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& q = r->requests;
  EXPECT_NEAR(q[0].ttft_s, 0.06, kEps);
  EXPECT_NEAR(q[1].ttft_s, 0.15, kEps);
  EXPECT_NEAR(q[2].ttft_s, 0.16, kEps);
  EXPECT_NEAR(q[0].tpot_s, 0.012, kEps);
  EXPECT_NEAR(q[1].tpot_s, 0.012, kEps);
  EXPECT_TRUE(std::isnan(q[2].tpot_s));
  ASSERT_EQ(q[0].itl_s.size(), 2u);
  EXPECT_NEAR(q[0].itl_s[0], 0.012, kEps);
  EXPECT_NEAR(q[0].itl_s[1], 0.012, kEps);
  EXPECT_NEAR(q[0].e2e_s, 0.084, kEps);
  EXPECT_NEAR(q[1].e2e_s, 0.162, kEps);
  EXPECT_NEAR(r->end_s, 0.19, kEps);
}

// The same profile on one colocated node: B's prompt lands in A's decode
// step (chunked prefill), which is what disaggregation removes:
//   [0, 0.06)       A's 50 prompt tokens                  -> A #1 at 0.06
//   [0.06, 0.152)   A decode + B's 80 (10 + 2 + 80 ms)     -> A #2, B #1 at 0.152
//   [0.152, 0.166)  A and B decode (10 + 4 ms)             -> A #3, B #2 (both done)
// TTFT A 0.06, B 0.132; TPOT A (0.166-0.06)/2 = 0.053, B 0.014.
TEST(SimulatorTest, HandComputedColocatedTrace) {
  const std::vector<SimRequest> requests = {{0.0, 50, 3}, {0.02, 80, 2}};
  absl::StatusOr<SimResult> r = Simulate(requests, Colocated(HandProfile()));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& q = r->requests;
  EXPECT_NEAR(q[0].ttft_s, 0.06, kEps);
  EXPECT_NEAR(q[1].ttft_s, 0.132, kEps);
  EXPECT_NEAR(q[0].tpot_s, 0.053, kEps);
  EXPECT_NEAR(q[1].tpot_s, 0.014, kEps);
  ASSERT_EQ(q[0].itl_s.size(), 2u);
  EXPECT_NEAR(q[0].itl_s[0], 0.092, kEps);
  EXPECT_NEAR(q[0].itl_s[1], 0.014, kEps);
}

// Two colocated nodes, the router's rule: a prompt goes to the node with the
// least prompt work not answered yet, then the fewest requests.
//   R0 t=0     10 in, 100 out -> node 0 (both empty)  prompt [0, 0.02)
//   R1 t=0.001 300 in, 5 out  -> node 1 (node 0 still owes R0's #1):
//                                three 100-token chunks (110 ms each) -> #1 at 0.331
//   R2 t=0.03  10 in, 100 out -> node 0 (no prompt owed; node 1 owes 300)
//                                beside R0's decode: [0.032, 0.054) -> #1 at 0.054
//   R3 t=0.1   10 in, 2 out   -> node 0, though it has 2 requests to node 1's
//                                1: node 1 owes R1's 300 prompt tokens.
//                                R0+R2 decode steps (14 ms) from 0.054 end at
//                                0.110; then R0, R2 and R3's prompt (24 ms)
//                                -> #1 at 0.134, then a 3-sequence decode
//                                (16 ms) -> #2 at 0.150.
// TTFT R3 0.034 (behind R1's prompt on node 1 it would be over 0.23).
TEST(SimulatorTest, ColocatedNodesTakePromptsWhereNoneIsOwed) {
  const std::vector<SimRequest> requests = {
      {0.0, 10, 100}, {0.001, 300, 5}, {0.03, 10, 100}, {0.1, 10, 2}};
  absl::StatusOr<SimResult> r = Simulate(requests, Colocated(HandProfile(), 2));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& q = r->requests;
  EXPECT_EQ(q[0].node_decode, 0);
  EXPECT_EQ(q[1].node_decode, 1);
  EXPECT_EQ(q[2].node_decode, 0);
  EXPECT_EQ(q[3].node_decode, 0);
  EXPECT_NEAR(q[1].ttft_s, 0.330, kEps);
  EXPECT_NEAR(q[2].ttft_s, 0.024, kEps);
  EXPECT_NEAR(q[3].ttft_s, 0.034, kEps);
  EXPECT_NEAR(q[3].tpot_s, 0.016, kEps);
}

// Decode cost against context: the hand profile plus 0.1 ms per KV token a
// decode sequence attends (its prompt and the tokens generated so far,
// the one it feeds included).
// 1P1D, A alone (t=0, 50 in, 3 out): token #1 at 0.06 (10 + 50 ms); token
// #2 attends 51 positions: 10 + 2 + 5.1 ms -> 0.0771; token #3 52: 17.2 ms
// -> 0.0943. TPOT (0.0943 - 0.06)/2 = 0.01715.
// Colocated, A (t=0, 50 in, 3 out) and B (t=0.02, 80 in, 2 out):
//   [0, 0.06)          A's prompt                                -> A #1
//   [0.06, 0.1571)     A decode at 51 + B's 80 (10 + 2 + 5.1 + 80 ms)
//                                                                -> A #2, B #1
//   [0.1571, 0.1844)   A at 52 and B at 81 (10 + 4 + 13.3 ms)    -> A #3, B #2
// TTFT B 0.1371; TPOT A (0.1844 - 0.06)/2 = 0.0622, B 0.0273.
TEST(SimulatorTest, HandComputedDecodeContextTrace) {
  DeviceProfile p = HandProfile();
  p.step.decode_context_token_s = 0.0001;
  absl::StatusOr<SimResult> one = Simulate({{0.0, 50, 3}}, Disaggregated(p));
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->requests[0].itl_s.size(), 2u);
  EXPECT_NEAR(one->requests[0].itl_s[0], 0.0171, kEps);
  EXPECT_NEAR(one->requests[0].itl_s[1], 0.0172, kEps);
  EXPECT_NEAR(one->requests[0].tpot_s, 0.01715, kEps);

  absl::StatusOr<SimResult> r = Simulate({{0.0, 50, 3}, {0.02, 80, 2}}, Colocated(p));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& q = r->requests;
  EXPECT_NEAR(q[0].ttft_s, 0.06, kEps);
  EXPECT_NEAR(q[1].ttft_s, 0.1371, kEps);
  EXPECT_NEAR(q[0].tpot_s, 0.0622, kEps);
  EXPECT_NEAR(q[1].tpot_s, 0.0273, kEps);
  EXPECT_NEAR(r->end_s, 0.1844, kEps);
}

// Two nodes sharing a host: each step costs the hand profile alone and
// twice that while the other node is mid-step (step_co_run = 2x every
// term), so a step progresses at half speed while the other computes.
// 1P1D, A (t=0, 50 in, 3 out), B (t=0.02, 80 in, 2 out):
//   0      prefill A (60 ms, decode idle)                    -> A #1 at 0.06
//   0.06   prefill B starts (90 ms alone); decode A #2 starts beside it:
//          24 ms -> 0.084; prefill now runs at half speed
//   0.084  prefill has done 12 of 90 ms; decode A #3 again beside it -> 0.108
//   0.108  prefill has done 24 of 90 ms; decode idle: the last 66 ms alone
//          -> B #1 at 0.174
//   0.174  decode B #2 alone (12 ms)                         -> 0.186
// TTFT A 0.06, B 0.154; TPOT A 0.024, B 0.012. Without the co-run cost:
// B #1 at 0.15, A's TPOT 0.012.
TEST(SimulatorTest, HandComputedCoRunTrace) {
  DeviceProfile p = HandProfile();
  p.step_co_run = StepCost{0.020, 0.002, 0, 0.004, 0};
  absl::StatusOr<SimResult> r = Simulate({{0.0, 50, 3}, {0.02, 80, 2}}, Disaggregated(p));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& q = r->requests;
  EXPECT_NEAR(q[0].ttft_s, 0.06, kEps);
  EXPECT_NEAR(q[0].tpot_s, 0.024, kEps);
  EXPECT_NEAR(q[0].e2e_s, 0.108, kEps);
  EXPECT_NEAR(q[1].ttft_s, 0.154, kEps);
  EXPECT_NEAR(q[1].tpot_s, 0.012, kEps);
  EXPECT_NEAR(r->end_s, 0.186, kEps);
  EXPECT_EQ(r->steps, 5);  // stale completions of re-timed steps are not steps

  // A single colocated node has nobody to share with: its trace is the
  // hand profile's (HandComputedColocatedTrace).
  absl::StatusOr<SimResult> c = Simulate({{0.0, 50, 3}, {0.02, 80, 2}}, Colocated(p));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(c->requests[1].ttft_s, 0.132, kEps);
  EXPECT_NEAR(c->requests[0].tpot_s, 0.053, kEps);
}

// Decode after a prefill: the hand profile plus 12 ms extra fading with a
// 12 ms time constant, for batches up to 1. One request (50 in, 3 out).
//  - Colocated: token #1 at 0.06; the first decode step starts as the
//    prefill ends: 12 + 12 ms -> 0.084; the second 24 ms after it:
//    12 + 12 e^-2 ms -> 0.0976. TPOT 0.0188 against 0.012 without.
//  - 1P1D: the decode node never prefills: 12 ms steps, TPOT 0.012.
//  - Colocated, two requests decoding together (batch 2 > 1): no extra
//    (below).
TEST(SimulatorTest, HandComputedPostPrefillTrace) {
  DeviceProfile p = HandProfile();
  p.post_prefill = PostPrefillCost{0.012, 0.012, 1};
  absl::StatusOr<SimResult> c = Simulate({{0.0, 50, 3}}, Colocated(p));
  ASSERT_TRUE(c.ok()) << c.status();
  const RequestResult& a = c->requests[0];
  EXPECT_NEAR(a.ttft_s, 0.06, kEps);
  ASSERT_EQ(a.itl_s.size(), 2u);
  EXPECT_NEAR(a.itl_s[0], 0.024, kEps);
  EXPECT_NEAR(a.itl_s[1], 0.012 + 0.012 * std::exp(-2.0), kEps);
  EXPECT_NEAR(a.tpot_s, (0.024 + 0.012 + 0.012 * std::exp(-2.0)) / 2, kEps);

  absl::StatusOr<SimResult> d = Simulate({{0.0, 50, 3}}, Disaggregated(p));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_NEAR(d->requests[0].ttft_s, 0.06, kEps);
  EXPECT_NEAR(d->requests[0].tpot_s, 0.012, kEps);

  // A and B (both 50 in, 3 out, at 0): A's prompt [0, 0.06); A's decode
  // and B's prompt [0.06, 0.122) (a prefill step: no extra); A and B decode
  // as a batch of 2 > 1, right after that prefill: 14 ms, no extra ->
  // 0.136, A done (TPOT 0.038); B alone 14 ms after the prefill:
  // 12 + 12 e^(-14/12) ms.
  absl::StatusOr<SimResult> two = Simulate({{0.0, 50, 3}, {0.0, 50, 3}}, Colocated(p));
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_NEAR(two->requests[0].tpot_s, 0.038, kEps);
  EXPECT_NEAR(two->requests[1].ttft_s, 0.122, kEps);
  ASSERT_EQ(two->requests[1].itl_s.size(), 2u);
  EXPECT_NEAR(two->requests[1].itl_s[0], 0.014, kEps);
  EXPECT_NEAR(two->requests[1].itl_s[1], 0.012 + 0.012 * std::exp(-0.014 / 0.012), kEps);
}

// Decode after another node's prefill on the same host: the co-run trace's
// profile (HandComputedCoRunTrace) plus post_peer_prefill, 12 ms extra
// fading with a 12 ms time constant, for batches up to 1.
//  - 1P1D, A alone (50 in, 3 out): its prompt ends at 0.06 on the prefill
//    node, which then idles; decode #2 starts right then: 12 + 12 ms ->
//    0.084; #3 24 ms after the prefill: 12 + 12 e^-2 ms. The same numbers
//    as a colocated node after its own prompt (HandComputedPostPrefillTrace).
//  - Without the co-run cost (nodes on separate hosts): 12 ms steps.
//  - A and B as in the co-run trace: A's decode steps start while B's
//    prompt is mid-step: the co-run cost, no extra (A's TPOT 0.024 as
//    there); B's decode step starts at 0.174 as its prompt ends, the host
//    otherwise quiet: 24 ms (12 ms there).
TEST(SimulatorTest, HandComputedPostPeerPrefillTrace) {
  DeviceProfile p = HandProfile();
  p.step_co_run = StepCost{0.020, 0.002, 0, 0.004, 0};
  p.post_peer_prefill = PostPrefillCost{0.012, 0.012, 1};
  absl::StatusOr<SimResult> r = Simulate({{0.0, 50, 3}}, Disaggregated(p));
  ASSERT_TRUE(r.ok()) << r.status();
  const RequestResult& a = r->requests[0];
  EXPECT_NEAR(a.ttft_s, 0.06, kEps);
  ASSERT_EQ(a.itl_s.size(), 2u);
  EXPECT_NEAR(a.itl_s[0], 0.024, kEps);
  EXPECT_NEAR(a.itl_s[1], 0.012 + 0.012 * std::exp(-2.0), kEps);

  DeviceProfile apart = p;
  apart.step_co_run.reset();
  absl::StatusOr<SimResult> s = Simulate({{0.0, 50, 3}}, Disaggregated(apart));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_NEAR(s->requests[0].tpot_s, 0.012, kEps);

  absl::StatusOr<SimResult> two = Simulate({{0.0, 50, 3}, {0.02, 80, 2}}, Disaggregated(p));
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_NEAR(two->requests[0].tpot_s, 0.024, kEps);
  EXPECT_NEAR(two->requests[1].ttft_s, 0.154, kEps);
  EXPECT_NEAR(two->requests[1].tpot_s, 0.024, kEps);
  EXPECT_NEAR(two->end_s, 0.198, kEps);
}

// Layer-wise shipping: 100 prompt tokens, 1000 B/token over 10 layers is
// 10 kB a layer; the step takes 110 ms, so layer l is ready at 11 ms*(l+1).
//  - 1 MB/s (10 ms a layer): each layer leaves as it is ready; only the
//    last one's 10 ms (+5 ms latency) is exposed: KV lands at 0.125 and
//    token #2 at 0.137.
//  - 0.5 MB/s (20 ms a layer): the link is the bottleneck: it starts at
//    0.011 and takes 200 ms: KV lands at 0.216, token #2 at 0.228.
TEST(SimulatorTest, KvTransferOverlapsComputeLayerByLayer) {
  for (auto [bandwidth, token2] : {std::pair{1e6, 0.137}, std::pair{5e5, 0.228}}) {
    DeviceProfile p = HandProfile();
    p.n_layers = 10;
    p.link.bandwidth_bytes_per_s = bandwidth;
    p.link.latency_s = 0.005;
    absl::StatusOr<SimResult> r = Simulate({{0.0, 100, 2}}, Disaggregated(p));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NEAR(r->requests[0].ttft_s, 0.11, kEps);
    EXPECT_NEAR(r->requests[0].e2e_s, token2, kEps) << bandwidth;
  }
}

// The decode node holds 10 blocks of 16 tokens; each request may grow to 80
// tokens (5 blocks), so two fit and the third waits in the router until the
// first one finishes and frees its blocks. A request that needs 11 blocks
// can never fit and is rejected.
TEST(SimulatorTest, KvCapacityLimitsAdmission) {
  DeviceProfile p = HandProfile();
  p.kv_blocks = 10;
  const std::vector<SimRequest> requests = {{0, 64, 16}, {0, 64, 16}, {0, 64, 16}, {0, 160, 16}};
  absl::StatusOr<SimResult> r = Simulate(requests, Disaggregated(p));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& q = r->requests;
  EXPECT_EQ(q[0].dispatch_s, 0);
  EXPECT_EQ(q[1].dispatch_s, 0);
  const double first_done = std::min(q[0].e2e_s, q[1].e2e_s);
  EXPECT_NEAR(q[2].dispatch_s, first_done, kEps);
  EXPECT_GT(q[2].ttft_s, first_done);
  EXPECT_TRUE(q[2].completed);
  EXPECT_FALSE(q[3].completed);

  // With room for all three, none waits.
  p.kv_blocks = 15;
  r = Simulate(requests, Disaggregated(p));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->requests[2].dispatch_s, 0);
  EXPECT_TRUE(r->requests[3].completed);
}

// The router spreads prompts over the prefill pool (fewest queued tokens)
// and sequences over the decode pool (most free blocks).
TEST(SimulatorTest, LeastLoadedSelectionSpreadsRequests) {
  const std::vector<SimRequest> requests = {{0, 50, 4}, {0, 50, 4}, {0, 50, 4}, {0, 50, 4}};
  absl::StatusOr<SimResult> r = Simulate(requests, Disaggregated(HandProfile(), 2, 2));
  ASSERT_TRUE(r.ok()) << r.status();
  int per_prefill[2] = {0, 0}, per_decode[2] = {0, 0};
  for (const RequestResult& q : r->requests) {
    ++per_prefill[q.node_prefill];
    ++per_decode[q.node_decode];
  }
  EXPECT_EQ(per_prefill[0], 2);
  EXPECT_EQ(per_prefill[1], 2);
  EXPECT_EQ(per_decode[0], 2);
  EXPECT_EQ(per_decode[1], 2);
  // A node starts a step as soon as a prompt arrives; the second prompt on
  // each prefill node arrives while it runs and waits for the next step.
  EXPECT_NEAR(r->requests[0].ttft_s, 0.06, kEps);
  EXPECT_NEAR(r->requests[1].ttft_s, 0.06, kEps);
  EXPECT_NEAR(r->requests[2].ttft_s, 0.12, kEps);
  EXPECT_NEAR(r->requests[3].ttft_s, 0.12, kEps);
}

TEST(SimulatorTest, SameInputsSameResults) {
  const std::vector<SimRequest> requests = PoissonRequests(20, 500, 3);
  std::vector<SimRequest> varied = requests;
  for (size_t i = 0; i < varied.size(); ++i) {
    varied[i].input_tokens = 20 + static_cast<int32_t>(i * 37 % 200);
    varied[i].output_tokens = 1 + static_cast<int32_t>(i * 13 % 30);
  }
  for (const SimOptions& o : {Disaggregated(HandProfile(), 2, 3), Colocated(HandProfile(), 2)}) {
    absl::StatusOr<SimResult> a = Simulate(varied, o);
    absl::StatusOr<SimResult> b = Simulate(varied, o);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->requests.size(), b->requests.size());
    for (size_t i = 0; i < a->requests.size(); ++i) {
      EXPECT_EQ(a->requests[i].ttft_s, b->requests[i].ttft_s);
      EXPECT_EQ(a->requests[i].itl_s, b->requests[i].itl_s);
    }
    EXPECT_EQ(a->steps, b->steps);
  }
}

// Prefix-cache hits: a prompt whose first 48 of 50 tokens are cached costs
// one step of its 2-token tail (10 + 2 ms) and attends over the cached
// positions; the next prompt queues behind that step, not a full one:
//   [0, 0.012)      A's last 2 tokens        -> A #1 at 0.012
//   [0.012, 0.074)  A decode + B's 50 tokens -> A #2 (done), B #1 at 0.074
// Uncached, A alone would take 0.06.
TEST(SimulatorTest, CachedPromptTokensAreNotRecomputed) {
  std::vector<SimRequest> requests = {{0.0, 50, 2, 48}, {0.001, 50, 1}};
  absl::StatusOr<SimResult> r = Simulate(requests, Colocated(HandProfile()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->requests[0].ttft_s, 0.012, kEps);
  EXPECT_NEAR(r->requests[0].e2e_s, 0.074, kEps);
  EXPECT_NEAR(r->requests[1].ttft_s, 0.073, kEps);
  // The same on a prefill node: the tail alone, then KV to the decode node.
  r = Simulate(requests, Disaggregated(HandProfile()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->requests[0].ttft_s, 0.012, kEps);
  EXPECT_NEAR(r->requests[1].ttft_s, 0.071, kEps);
  // The decode node needs the cached prefix's KV too: over a 1 MB/s link,
  // 50 tokens x 1000 B / 4 layers = 12.5 ms a layer; layers ready every
  // 3 ms of the 12 ms step, so the last lands at 0.003 + 4 x 0.0125 = 0.053
  // and token #2 (a 12 ms decode step) at 0.065.
  SimOptions slow = Disaggregated(HandProfile());
  slow.prefill.link.bandwidth_bytes_per_s = 1e6;
  r = Simulate({{0.0, 50, 2, 48}}, slow);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->requests[0].ttft_s, 0.012, kEps);
  EXPECT_NEAR(r->requests[0].e2e_s, 0.065, kEps);
  // Attention over the cached prefix is still paid: 2 new tokens after 48.
  DeviceProfile attn = HandProfile();
  attn.step.attention_pair_s = 1e-5;
  r = Simulate({{0.0, 50, 1, 48}}, Colocated(attn));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->requests[0].ttft_s, 0.012 + 1e-5 * ChunkAttentionPairs(48, 2), kEps);
}

TEST(SimulatorTest, RejectsBadInputs) {
  EXPECT_FALSE(Simulate({{0, 10, 1, 10}}, Disaggregated(HandProfile())).ok());
  EXPECT_FALSE(Simulate({{0, 10, 1, -1}}, Disaggregated(HandProfile())).ok());
  EXPECT_FALSE(Simulate({{0, 0, 1}}, Disaggregated(HandProfile())).ok());
  EXPECT_FALSE(Simulate({{1, 10, 1}, {0.5, 10, 1}}, Disaggregated(HandProfile())).ok());
  EXPECT_FALSE(Simulate({{NAN, 10, 1}}, Disaggregated(HandProfile())).ok());
  SimOptions half = Disaggregated(HandProfile());
  half.deployment.n_decode = 0;
  EXPECT_FALSE(Simulate({{0, 10, 1}}, half).ok());
  SimOptions broken = Colocated(HandProfile());
  broken.mixed.max_batch_tokens = 0;
  EXPECT_FALSE(Simulate({{0, 10, 1}}, broken).ok());
}

}  // namespace
}  // namespace pdserve::planner
