// The router's node registry under failures: capacity accounting that
// belongs to one registration (never negative across expiry and
// re-registration), and nodes taken out of rotation on a transport failure
// until a heartbeat after their probation.
#include "router/node_registry.h"

#include "gtest/gtest.h"
#include "router/placement.h"
#include "router/selection_policy.h"

namespace pdserve::router {
namespace {

v1::NodeInfo Info(const std::string& id, v1::NodeRole role, const std::string& address) {
  v1::NodeInfo info;
  info.set_node_id(id);
  info.set_role(role);
  info.set_address(address);
  if (role == v1::NODE_ROLE_DECODE) info.set_kv_endpoint(address);
  info.set_block_size(16);
  info.set_model_fingerprint("m");
  return info;
}

v1::NodeLoad Load(int32_t total_blocks) {
  v1::NodeLoad l;
  l.set_total_kv_blocks(total_blocks);
  l.set_free_kv_blocks(total_blocks);
  return l;
}

NodeView View(const NodeRegistry& r, const std::string& id) {
  for (const NodeView& v : r.Snapshot()) {
    if (v.id == id) return v;
  }
  ADD_FAILURE() << id << " is not registered";
  return {};
}

// Port 1 on loopback: nothing listens, so the channel never becomes READY.
constexpr char kDeadAddress[] = "127.0.0.1:1";

TEST(NodeRegistryTest, ReleasesOfAnOldRegistrationAreIgnored) {
  NodeRegistry r(absl::Seconds(30));
  auto lease = r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  ASSERT_TRUE(lease.ok()) << lease.status();
  const uint64_t first = View(r, "d").epoch;
  r.AddWork("d", first, 10, 0);
  EXPECT_EQ(View(r, "d").reserved_blocks, 10);
  EXPECT_EQ(View(r, "d").free_blocks(), 90);

  // The node goes away and a new process registers under the same id.
  ASSERT_TRUE(r.Deregister("d", *lease).ok());
  ASSERT_TRUE(r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100)).ok());
  const NodeView fresh = View(r, "d");
  EXPECT_NE(fresh.epoch, first);
  EXPECT_EQ(fresh.reserved_blocks, 0);

  // The old request ends: its release must not make the new node look
  // larger than it is (it used to go to -10).
  r.DoneWork("d", first, 10);
  EXPECT_EQ(View(r, "d").reserved_blocks, 0);
  EXPECT_EQ(View(r, "d").free_blocks(), 100);

  r.AddWork("d", fresh.epoch, 4, 0);
  r.DoneWork("d", first, 4);
  EXPECT_EQ(View(r, "d").reserved_blocks, 4);
  r.DoneWork("d", fresh.epoch, 4);
  r.DoneWork("d", fresh.epoch, 4);  // a double release never goes below zero
  EXPECT_EQ(View(r, "d").reserved_blocks, 0);
  EXPECT_EQ(View(r, "d").inflight_requests, 0);

  r.AddWork("p", 12345, 0, 500);  // unknown node: ignored
  r.DonePrefill("d", first, 500);
  EXPECT_EQ(View(r, "d").inflight_prefill_tokens, 0);
}

TEST(NodeRegistryTest, HeartbeatOfTheSameRegistrationKeepsItsWork) {
  NodeRegistry r(absl::Seconds(30));
  auto lease = r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  ASSERT_TRUE(lease.ok());
  const uint64_t epoch = View(r, "d").epoch;
  r.AddWork("d", epoch, 7, 0);
  ASSERT_TRUE(r.Heartbeat("d", *lease, Load(100)).ok());
  // Re-registration with its own lease is the same instance.
  ASSERT_TRUE(r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100), *lease).ok());
  EXPECT_EQ(View(r, "d").epoch, epoch);
  EXPECT_EQ(View(r, "d").reserved_blocks, 7);
}

TEST(NodeRegistryTest, TransportFailureTakesANodeOutOfRotationUntilItsProbationEnds) {
  NodeRegistry r(absl::Seconds(30), absl::Hours(1));
  auto d0 = r.Register(Info("d0", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  auto d1 = r.Register(Info("d1", v1::NODE_ROLE_DECODE, "127.0.0.1:2"), Load(50));
  auto p = r.Register(Info("p", v1::NODE_ROLE_PREFILL, "127.0.0.1:3"), Load(0));
  ASSERT_TRUE(d0.ok() && d1.ok() && p.ok());
  RequestShape shape;
  shape.prompt_tokens = 10;
  shape.blocks_needed = 2;
  LeastLoadedPolicy policy;
  // The emptiest decode node wins while it is healthy.
  Selection sel = policy.Select(shape, r.Snapshot());
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel.decode->id, "d0");

  EXPECT_FALSE(r.ReportFailure("d0", View(r, "d0").epoch + 1)) << "another registration's failure";
  EXPECT_FALSE(View(r, "d0").suspect);
  EXPECT_TRUE(r.ReportFailure("d0", View(r, "d0").epoch));
  EXPECT_TRUE(View(r, "d0").suspect);
  sel = policy.Select(shape, r.Snapshot());
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel.decode->id, "d1");
  // It still counts as a decode node: requests wait for it rather than fail.
  EXPECT_TRUE(r.HasRole(v1::NODE_ROLE_DECODE));

  // A heartbeat within the probation does not bring it back.
  ASSERT_TRUE(r.Heartbeat("d0", *d0, Load(100)).ok());
  EXPECT_TRUE(View(r, "d0").suspect);

  // With every prefill node out, no pair can be chosen.
  ASSERT_TRUE(r.ReportFailure("p", View(r, "p").epoch));
  EXPECT_FALSE(policy.Select(shape, r.Snapshot()).ok());
}

TEST(NodeRegistryTest, AStalledNodeGetsNoNewWork) {
  NodeRegistry r(absl::Seconds(30));
  auto d0 = r.Register(Info("d0", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  ASSERT_TRUE(d0.ok());
  ASSERT_TRUE(r.Register(Info("d1", v1::NODE_ROLE_DECODE, "127.0.0.1:2"), Load(50)).ok());
  ASSERT_TRUE(r.Register(Info("p", v1::NODE_ROLE_PREFILL, "127.0.0.1:3"), Load(0)).ok());
  RequestShape shape;
  shape.prompt_tokens = 10;
  shape.blocks_needed = 2;
  LeastLoadedPolicy policy;
  v1::NodeLoad stalled = Load(100);
  stalled.set_stalled_ms(61000);
  ASSERT_TRUE(r.Heartbeat("d0", *d0, stalled).ok());
  Selection sel = policy.Select(shape, r.Snapshot());
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel.decode->id, "d1");
  // Progressing again: back in rotation at its next heartbeat.
  ASSERT_TRUE(r.Heartbeat("d0", *d0, Load(100)).ok());
  EXPECT_EQ(policy.Select(shape, r.Snapshot()).decode->id, "d0");
}

// Colocated nodes: a prompt goes where no other prompt is queued, even to
// the node with more requests (those are decoding); a mixed node's prompt
// counts from dispatch to its first token (Placement). Equal prompt work:
// the node with fewer requests.
TEST(NodeRegistryTest, MixedNodesTakePromptsWhereNoneIsQueued) {
  NodeRegistry r(absl::Seconds(30));
  ASSERT_TRUE(r.Register(Info("m0", v1::NODE_ROLE_MIXED, kDeadAddress), Load(200)).ok());
  ASSERT_TRUE(r.Register(Info("m1", v1::NODE_ROLE_MIXED, kDeadAddress), Load(200)).ok());
  RequestShape shape;
  shape.prompt_tokens = 500;
  shape.blocks_needed = 36;
  LeastLoadedPolicy policy;
  auto pick = [&] {
    const Selection sel = policy.Select(shape, r.Snapshot());
    EXPECT_TRUE(sel.ok() && sel.mixed);
    return sel.mixed ? sel.mixed->id : std::string();
  };
  auto place = [&](const std::string& id) {
    Selection sel;
    sel.mixed = View(r, id);
    return Placement::Reserve(&r, sel, shape.blocks_needed, shape.prompt_tokens);
  };
  // m0: two requests decoding. m1: one prompt being computed.
  Placement a = place("m0"), b = place("m0"), c = place("m1");
  EXPECT_TRUE(a.mixed());
  EXPECT_EQ(View(r, "m0").inflight_prefill_tokens, 1000);
  a.ReleasePrefill();
  b.ReleasePrefill();
  EXPECT_EQ(View(r, "m0").inflight_prefill_tokens, 0);
  EXPECT_EQ(View(r, "m0").inflight_requests, 2);
  EXPECT_EQ(View(r, "m1").inflight_prefill_tokens, 500);
  EXPECT_EQ(pick(), "m0");
  // m1's prompt is done: both have no prompt queued; m1 has fewer requests.
  c.ReleasePrefill();
  EXPECT_EQ(pick(), "m1");
  // A prompt the node reports queued (another router's) counts too.
  v1::NodeLoad busy = Load(200);
  busy.set_queued_prefill_tokens(300);
  auto lease = r.Register(Info("m2", v1::NODE_ROLE_MIXED, kDeadAddress), busy);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(pick(), "m1");
  c.Release();
  EXPECT_EQ(View(r, "m1").inflight_requests, 0);
  a.Release();
  b.Release();
  EXPECT_EQ(View(r, "m0").reserved_blocks, 0);
  EXPECT_EQ(View(r, "m0").inflight_prefill_tokens, 0);
}

TEST(NodeRegistryTest, ARetryAvoidsTheFailedPairWhileAnotherFits) {
  NodeRegistry r(absl::Seconds(30));
  ASSERT_TRUE(r.Register(Info("d0", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100)).ok());
  ASSERT_TRUE(r.Register(Info("d1", v1::NODE_ROLE_DECODE, "127.0.0.1:2"), Load(50)).ok());
  ASSERT_TRUE(r.Register(Info("p", v1::NODE_ROLE_PREFILL, "127.0.0.1:3"), Load(0)).ok());
  RequestShape shape;
  shape.prompt_tokens = 10;
  shape.blocks_needed = 2;
  shape.avoid_nodes = {"p", "d0"};
  LeastLoadedPolicy policy;
  const Selection sel = policy.Select(shape, r.Snapshot());
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel.decode->id, "d1");
  EXPECT_EQ(sel.prefill->id, "p") << "the only prefill node is still taken";
}

TEST(NodeRegistryTest, FirstHeartbeatAfterTheProbationRestoresTheNode) {
  NodeRegistry r(absl::Seconds(30), absl::ZeroDuration());
  auto d = r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(r.ReportFailure("d", View(r, "d").epoch));
  EXPECT_TRUE(View(r, "d").suspect);
  ASSERT_TRUE(r.Heartbeat("d", *d, Load(100)).ok());
  EXPECT_FALSE(View(r, "d").suspect);
}

TEST(NodeRegistryTest, ANewRegistrationStartsInRotation) {
  NodeRegistry r(absl::Seconds(30), absl::Hours(1));
  auto d = r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(r.ReportFailure("d", View(r, "d").epoch));
  ASSERT_TRUE(r.Deregister("d", *d).ok());
  // The restarted process is a new registration: it is not on probation.
  ASSERT_TRUE(r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100)).ok());
  EXPECT_FALSE(View(r, "d").suspect);
}

// Two routers over one node: each sees the other's work only through the
// node's reported commitments. A router counts its own reservations on top
// of the last report until a report has had time to include them, and its
// releases likewise, so neither overcommits nor double counts for long.
TEST(NodeRegistryTest, CapacityFollowsTheNodesReportedCommitments) {
  NodeRegistry r(absl::Seconds(30), absl::Seconds(2), /*report_lag=*/absl::Milliseconds(100));
  auto lease = r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  ASSERT_TRUE(lease.ok());
  const uint64_t epoch = View(r, "d").epoch;

  // Another router's requests hold 60 blocks: only 40 are left for ours.
  v1::NodeLoad other = Load(100);
  other.set_committed_kv_blocks(60);
  ASSERT_TRUE(r.Heartbeat("d", *lease, other).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 40);
  ASSERT_TRUE(r.Register(Info("p", v1::NODE_ROLE_PREFILL, kDeadAddress), Load(100)).ok());
  RequestShape fits, too_big;
  fits.blocks_needed = 40;
  too_big.blocks_needed = 41;
  LeastLoadedPolicy policy;
  EXPECT_TRUE(policy.Select(fits, r.Snapshot()).ok());
  EXPECT_FALSE(policy.Select(too_big, r.Snapshot()).ok()) << "41 blocks on a node with 40 free";

  // Ours: counted at once, before any report shows it.
  r.AddWork("d", epoch, 30, 0);
  EXPECT_EQ(View(r, "d").free_blocks(), 10);
  // A report sent right away may predate our admission: still counted.
  ASSERT_TRUE(r.Heartbeat("d", *lease, other).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 10);
  // A later report includes it: counted once, not twice.
  absl::SleepFor(absl::Milliseconds(150));
  v1::NodeLoad both = Load(100);
  both.set_committed_kv_blocks(90);
  ASSERT_TRUE(r.Heartbeat("d", *lease, both).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 10);

  // Our request ends: free at once, though the node still reports it.
  r.DoneWork("d", epoch, 30);
  EXPECT_EQ(View(r, "d").free_blocks(), 40);
  ASSERT_TRUE(r.Heartbeat("d", *lease, both).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 40);
  absl::SleepFor(absl::Milliseconds(150));
  ASSERT_TRUE(r.Heartbeat("d", *lease, other).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 40);

  // The other router's work ends too; a stale release never makes room
  // the node does not have, nor goes below zero.
  ASSERT_TRUE(r.Heartbeat("d", *lease, Load(100)).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 100);
  r.DoneWork("d", epoch, 30);
  EXPECT_EQ(View(r, "d").committed_blocks, 0);
  EXPECT_EQ(View(r, "d").free_blocks(), 100);
  v1::NodeLoad over = Load(100);
  over.set_committed_kv_blocks(130);  // overcommitted (a router that knew less)
  ASSERT_TRUE(r.Heartbeat("d", *lease, over).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 0);
}

TEST(NodeRegistryTest, ANewRegistrationForgetsUnreportedWork) {
  NodeRegistry r(absl::Milliseconds(50), absl::Seconds(2), absl::Seconds(10));
  auto lease = r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100));
  ASSERT_TRUE(lease.ok());
  r.AddWork("d", View(r, "d").epoch, 30, 0);
  EXPECT_EQ(View(r, "d").free_blocks(), 70);
  absl::SleepFor(absl::Milliseconds(100));  // expired: a restarted process registers
  ASSERT_TRUE(r.Register(Info("d", v1::NODE_ROLE_DECODE, kDeadAddress), Load(100)).ok());
  EXPECT_EQ(View(r, "d").free_blocks(), 100);
}

}  // namespace
}  // namespace pdserve::router
