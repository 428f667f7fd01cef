#include "router/node_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/secure_random.h"
#include "rpc/server_util.h"

namespace pdserve::router {
namespace {
constexpr size_t kMaxPrefixesPerNode = 65536;
}

NodeRegistry::NodeRegistry(absl::Duration expiry, absl::Duration probation,
                           absl::Duration report_lag)
    : expiry_(expiry), probation_(probation), report_lag_(report_lag) {}

void NodeRegistry::SetOnChange(std::function<void()> fn) { on_change_ = std::move(fn); }

void NodeRegistry::Notify() {
  if (on_change_) on_change_();
}

absl::StatusOr<std::string> NodeRegistry::Register(const v1::NodeInfo& info,
                                                   const v1::NodeLoad& load,
                                                   std::string_view lease) {
  if (info.node_id().empty() || info.address().empty()) {
    return absl::InvalidArgumentError("node_id and address are required");
  }
  if (info.node_id().size() > 256 || info.address().size() > 1024 ||
      info.kv_endpoint().size() > 1024 || info.model_fingerprint().size() > 1024) {
    return absl::InvalidArgumentError(
        "node_id (256 bytes), address, kv_endpoint and model_fingerprint (1 KiB) are too long");
  }
  if (info.role() == v1::NODE_ROLE_UNSPECIFIED)
    return absl::InvalidArgumentError("node role is unset");
  if (info.role() == v1::NODE_ROLE_DECODE && info.kv_endpoint().empty()) {
    return absl::InvalidArgumentError("a decode node needs a kv_endpoint");
  }
  if (!model_fingerprint_.empty() && info.model_fingerprint() != model_fingerprint_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "node ", info.node_id(), " serves model ", info.model_fingerprint(),
        " but the router serves ", model_fingerprint_, " (start it with the router's model file)"));
  }
  std::string granted;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    auto existing = nodes_.find(info.node_id());
    const bool live = existing != nodes_.end() && now - existing->second.last_seen <= expiry_;
    const bool same_instance =
        live && !lease.empty() && SecretEquals(lease, existing->second.lease);
    if (live && !same_instance) {
      return absl::AlreadyExistsError(absl::StrCat(
          "node id ", info.node_id(),
          " is registered and heartbeating; another process may take the id only after that "
          "registration expires (",
          absl::FormatDuration(expiry_), " without a heartbeat) or is deregistered"));
    }
    // Compatibility with the nodes registered already, the replaced one aside.
    const bool others = nodes_.size() > (existing != nodes_.end() ? 1u : 0u);
    if (others) {
      if (model_fingerprint_.empty() && info.model_fingerprint() != fingerprint_) {
        return absl::FailedPreconditionError(
            absl::StrCat("node ", info.node_id(), " serves model ", info.model_fingerprint(),
                         " but the cluster serves ", fingerprint_));
      }
      if (info.block_size() != block_size_) {
        return absl::FailedPreconditionError(absl::StrCat("node ", info.node_id(),
                                                          " uses KV block size ", info.block_size(),
                                                          ", the cluster ", block_size_));
      }
    }
    fingerprint_ = info.model_fingerprint();
    block_size_ = info.block_size();
    Node& n = nodes_[info.node_id()];
    // A new registration (first, or after the old one expired) gets a new
    // lease; the old instance's lease stops working.
    // A new registration is a new process (or one the router forgot): the
    // work counted against the old one is not its work.
    if (!same_instance) {
      n.lease = SecureRandomHex(16);
      n.epoch = next_epoch_++;
      n.reserved_blocks = 0;
      n.inflight_prefill_tokens = 0;
      n.inflight_requests = 0;
      n.unreported.clear();
      n.suspect_since.reset();
    }
    granted = n.lease;
    const bool address_changed = n.info.address() != info.address();
    n.info = info;
    n.load = load;
    n.last_seen = now;
    if (!n.client || address_changed) {
      n.client = client_factory_
                     ? client_factory_(info.address())
                     : std::make_shared<GrpcNodeClient>(rpc::MakeChannel(info.address()));
    }
  }
  PDS_LOG(INFO) << "node " << info.node_id() << " (" << v1::NodeRole_Name(info.role()) << ") at "
                << info.address() << (info.kv_endpoint().empty() ? "" : ", KV at ")
                << info.kv_endpoint() << " registered";
  Notify();
  return granted;
}

absl::Status NodeRegistry::Heartbeat(const std::string& id, std::string_view lease,
                                     const v1::NodeLoad& load) {
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(id);
    if (it == nodes_.end()) {
      return absl::NotFoundError(absl::StrCat("node ", id, " is not registered"));
    }
    if (!SecretEquals(lease, it->second.lease)) {
      return absl::PermissionDeniedError(absl::StrCat("wrong lease for node ", id,
                                                      ": only the process that registered it may "
                                                      "heartbeat"));
    }
    Node& n = it->second;
    n.load = load;
    n.last_seen = absl::Now();
    // Changes older than the lag are in this report.
    while (!n.unreported.empty() && n.last_seen - n.unreported.front().first >= report_lag_) {
      n.unreported.pop_front();
    }
    // Heard from after its probation: back in rotation.
    if (n.suspect_since && n.last_seen - *n.suspect_since >= probation_) {
      n.suspect_since.reset();
      PDS_LOG(INFO) << "node " << id << " is back in rotation after its probation";
    }
  }
  Notify();
  return absl::OkStatus();
}

absl::Status NodeRegistry::Deregister(const std::string& id, std::string_view lease) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  if (it == nodes_.end())
    return absl::NotFoundError(absl::StrCat("node ", id, " is not registered"));
  if (!SecretEquals(lease, it->second.lease)) {
    return absl::PermissionDeniedError(absl::StrCat("wrong lease for node ", id,
                                                    ": only the process that registered it may "
                                                    "deregister it"));
  }
  nodes_.erase(it);
  PDS_LOG(INFO) << "node " << id << " deregistered";
  return absl::OkStatus();
}

void NodeRegistry::Remove(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (nodes_.erase(id) > 0) PDS_LOG(INFO) << "node " << id << " removed";
}

std::vector<std::string> NodeRegistry::Expire() {
  std::vector<std::string> gone;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (auto it = nodes_.begin(); it != nodes_.end();) {
    if (now - it->second.last_seen > expiry_) {
      gone.push_back(it->first);
      PDS_LOG(WARNING) << "node " << it->first << " missed its heartbeats for "
                       << absl::FormatDuration(now - it->second.last_seen) << ": dropped";
      nodes_.erase(it++);
    } else {
      ++it;
    }
  }
  return gone;
}

std::vector<NodeView> NodeRegistry::Snapshot() const {
  std::vector<NodeView> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, n] : nodes_) {
    NodeView v;
    v.id = id;
    v.role = n.info.role();
    v.address = n.info.address();
    v.kv_endpoint = n.info.kv_endpoint();
    v.load = n.load;
    v.reserved_blocks = n.reserved_blocks;
    int64_t committed = n.load.committed_kv_blocks();
    for (const auto& [when, blocks] : n.unreported) committed += blocks;
    v.committed_blocks = std::max<int64_t>(0, committed);
    v.inflight_prefill_tokens = n.inflight_prefill_tokens;
    v.inflight_requests = n.inflight_requests;
    v.epoch = n.epoch;
    v.suspect = n.suspect_since.has_value();
    out.push_back(std::move(v));
  }
  return out;
}

void NodeRegistry::List(v1::ListNodesResponse* out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, n] : nodes_) {
    v1::ListNodesResponse::Entry* e = out->add_nodes();
    *e->mutable_info() = n.info;
    *e->mutable_load() = n.load;
  }
}

std::shared_ptr<NodeClient> NodeRegistry::Client(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : it->second.client;
}

bool NodeRegistry::Has(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  return nodes_.contains(id);
}

size_t NodeRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return nodes_.size();
}

bool NodeRegistry::ReportFailure(const std::string& id, uint64_t epoch) {
  std::shared_ptr<NodeClient> client;
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(id);
    if (it == nodes_.end() || it->second.epoch != epoch || it->second.suspect_since) return false;
    client = it->second.client;
  }
  // Connected: the node itself answered UNAVAILABLE (draining); the connection is fine.
  if (client && client->Connected()) return false;
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(id);
    if (it == nodes_.end() || it->second.epoch != epoch || it->second.suspect_since) return false;
    it->second.suspect_since = absl::Now();
  }
  PDS_LOG(WARNING) << "node " << id << ": a call failed at the transport; out of rotation for "
                   << absl::FormatDuration(probation_) << " and until it heartbeats";
  return true;
}

void NodeRegistry::MarkSuspect(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  if (it != nodes_.end()) it->second.suspect_since = absl::Now();
}

bool NodeRegistry::HasRole(v1::NodeRole role) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, n] : nodes_) {
    if (n.info.role() == role && !n.load.draining()) return true;
  }
  return false;
}

int32_t NodeRegistry::block_size() const {
  absl::MutexLock lock(&mu_);
  return block_size_;
}

void NodeRegistry::AddWork(const std::string& id, uint64_t epoch, int32_t blocks,
                           int64_t prefill_tokens) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  if (it == nodes_.end() || it->second.epoch != epoch) return;
  it->second.reserved_blocks += blocks;
  if (blocks > 0) it->second.unreported.emplace_back(absl::Now(), blocks);
  it->second.inflight_prefill_tokens += prefill_tokens;
  it->second.inflight_requests += blocks > 0 ? 1 : 0;
}

void NodeRegistry::DonePrefill(const std::string& id, uint64_t epoch, int64_t prefill_tokens) {
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(id);
    if (it != nodes_.end() && it->second.epoch == epoch) {
      Node& n = it->second;
      n.inflight_prefill_tokens = std::max<int64_t>(0, n.inflight_prefill_tokens - prefill_tokens);
    }
  }
  Notify();
}

void NodeRegistry::DoneWork(const std::string& id, uint64_t epoch, int32_t blocks) {
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(id);
    if (it != nodes_.end() && it->second.epoch == epoch) {
      Node& n = it->second;
      n.reserved_blocks = std::max(0, n.reserved_blocks - blocks);
      if (blocks > 0) n.unreported.emplace_back(absl::Now(), -blocks);
      n.inflight_requests = std::max(0, n.inflight_requests - 1);
    }
  }
  Notify();
}

void NodeRegistry::RememberPrefix(const std::string& id, const std::vector<uint64_t>& hashes) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return;
  Node& n = it->second;
  for (uint64_t h : hashes) {
    if (!n.prefixes.insert(h).second) continue;
    n.prefix_order.push_back(h);
    if (n.prefix_order.size() > kMaxPrefixesPerNode) {
      n.prefixes.erase(n.prefix_order.front());
      n.prefix_order.pop_front();
    }
  }
}

int32_t NodeRegistry::CountPrefixHits(const std::string& id,
                                      const std::vector<uint64_t>& hashes) const {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return 0;
  int32_t n = 0;
  for (uint64_t h : hashes) {
    if (!it->second.prefixes.contains(h)) break;  // a chain: stop at the first miss
    ++n;
  }
  return n;
}

}  // namespace pdserve::router
