// The router's view of its nodes: who they are (role, addresses), their
// load as last reported, and the work the router has sent them since. Nodes
// register and heartbeat (or come from a static list, polled); a node that
// misses heartbeats for `expiry` is dropped.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pdserve/v1/node.grpc.pb.h"
#include "router/node_client.h"

namespace pdserve::router {

// What a selection policy sees of one node.
struct NodeView {
  std::string id;
  v1::NodeRole role = v1::NODE_ROLE_UNSPECIFIED;
  std::string address;
  std::string kv_endpoint;
  v1::NodeLoad load;            // as last reported
  int32_t reserved_blocks = 0;  // blocks this router's in-flight requests may grow to
  // The node's own count (load.committed_kv_blocks, every router's work)
  // corrected for what this router did since that report: blocks it
  // reserved that the report may not show yet, less blocks it released
  // that the report may still show. Never negative.
  int64_t committed_blocks = 0;
  int64_t inflight_prefill_tokens = 0;  // prompt tokens sent for prefill, not answered yet
  int32_t inflight_requests = 0;
  uint64_t epoch = 0;       // the registration: work is counted per registration
  bool suspect = false;     // a call to it failed at the transport: out of rotation
  int32_t prefix_hits = 0;  // filled per request by the policy's caller: cached blocks
  // Room for new work: the node's commitments when it reports them (other
  // routers' work included), never less than this router's own.
  int32_t free_blocks() const {
    const int64_t used = std::max<int64_t>(reserved_blocks, committed_blocks);
    return static_cast<int32_t>(std::max<int64_t>(0, load.total_kv_blocks() - used));
  }
};

class NodeRegistry {
 public:
  // `probation`: how long a node that failed a call stays out of rotation
  // (it returns with its first heartbeat after that).
  explicit NodeRegistry(absl::Duration expiry, absl::Duration probation = absl::Seconds(2),
                        absl::Duration report_lag = absl::Milliseconds(500));
  // How the router reaches a node at `address` (gRPC with TLS and the node
  // token in production, fakes in tests); default: a GrpcNodeClient over
  // rpc::MakeChannel(address). Set before the first node registers.
  using ClientFactory = std::function<std::shared_ptr<NodeClient>(const std::string& address)>;
  void SetClientFactory(ClientFactory factory) { client_factory_ = std::move(factory); }

  // The fingerprint (rpc::ModelFingerprint) of the router's own model: nodes
  // that serve another model are refused. Empty: the first node pins it.
  // Set before the first node registers.
  void SetModelFingerprint(std::string fingerprint) { model_fingerprint_ = std::move(fingerprint); }

  // Adds a node, or updates one. Returns the registration's lease: a secret
  // that heartbeats, Deregister and re-registration of this id must present.
  // A node id whose registration is live (heard from within `expiry`) is
  // taken only with its lease (ALREADY_EXISTS otherwise); once it expired or
  // was removed, any Register gets a fresh lease. Refuses incompatible nodes:
  // no address, a decode node without a KV endpoint (InvalidArgument), a
  // model fingerprint other than the router's or a block size other than
  // the nodes' registered already (FailedPrecondition).
  absl::StatusOr<std::string> Register(const v1::NodeInfo& info, const v1::NodeLoad& load,
                                       std::string_view lease = {});
  // NotFound when the node is unknown (it must register again),
  // PermissionDenied when `lease` is not its registration's.
  absl::Status Heartbeat(const std::string& id, std::string_view lease, const v1::NodeLoad& load);
  // Removes a node: NotFound when unknown, PermissionDenied on a wrong lease.
  absl::Status Deregister(const std::string& id, std::string_view lease);
  void Remove(const std::string& id);
  // Drops nodes not heard from within `expiry`; returns their ids.
  std::vector<std::string> Expire();

  std::vector<NodeView> Snapshot() const;
  void List(v1::ListNodesResponse* out) const;
  // Null when the node is unknown.
  std::shared_ptr<NodeClient> Client(const std::string& id) const;
  bool Has(const std::string& id) const;
  size_t size() const;
  bool HasRole(v1::NodeRole role) const;
  int32_t block_size() const;  // 0 until the first node registered

  // The router's accounting of work it sent (kept across heartbeats). It
  // belongs to one registration (`epoch`, from NodeView): a node that
  // expired and registered again starts from zero, and releases of work
  // counted in an older registration are ignored, so it never goes negative.
  // Each change is also kept as a correction to the node's reported
  // commitments until a report received `report_lag` after it (by then the
  // node counted it), so two routers sharing a node see each other's work.
  void AddWork(const std::string& id, uint64_t epoch, int32_t blocks, int64_t prefill_tokens);
  void DonePrefill(const std::string& id, uint64_t epoch, int64_t prefill_tokens);
  void DoneWork(const std::string& id, uint64_t epoch, int32_t blocks);

  // A call to the node failed with UNAVAILABLE. If its client is not
  // connected (refused, reset, keepalive timeout) the node is taken out of
  // rotation until its first heartbeat after the probation; returns whether
  // it was. A node that answered UNAVAILABLE itself (draining) stays.
  bool ReportFailure(const std::string& id, uint64_t epoch);
  // Takes the node out of rotation now (tests; operators).
  void MarkSuspect(const std::string& id);

  // Prefix affinity: block hashes recently sent to each prefill node
  // (bounded per node, oldest forgotten first).
  void RememberPrefix(const std::string& id, const std::vector<uint64_t>& hashes);
  int32_t CountPrefixHits(const std::string& id, const std::vector<uint64_t>& hashes) const;

  // Called (outside the lock) whenever capacity may have grown.
  void SetOnChange(std::function<void()> fn);

 private:
  ClientFactory client_factory_;
  struct Node {
    v1::NodeInfo info;
    std::string lease;
    v1::NodeLoad load;
    absl::Time last_seen;
    std::shared_ptr<NodeClient> client;
    uint64_t epoch = 0;
    std::optional<absl::Time> suspect_since;  // set: out of rotation
    int32_t reserved_blocks = 0;
    int64_t inflight_prefill_tokens = 0;
    int32_t inflight_requests = 0;
    // This router's reservations (+) and releases (-) the node's last report
    // may not reflect yet, oldest first.
    std::deque<std::pair<absl::Time, int32_t>> unreported;
    absl::flat_hash_set<uint64_t> prefixes;
    std::deque<uint64_t> prefix_order;
  };
  void Notify();

  const absl::Duration expiry_;
  const absl::Duration probation_;
  const absl::Duration report_lag_;
  mutable absl::Mutex mu_;
  uint64_t next_epoch_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, Node> nodes_ ABSL_GUARDED_BY(mu_);
  std::string model_fingerprint_;  // the router's; set before nodes register
  std::string fingerprint_
      ABSL_GUARDED_BY(mu_);  // pinned by the first node when the above is empty
  int32_t block_size_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void()> on_change_;
};

}  // namespace pdserve::router
