// The prefill node's Prefill RPC: computes the prompt's KV with the engine,
// ships each layer to the decode node as soon as it is stored (so the
// transfer overlaps the later layers' compute), returns token #1 the moment
// it is sampled, and frees the blocks once the decode node acknowledged the
// whole transfer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

#include "engine/engine.h"
#include "pdserve/v1/node.pb.h"
#include "tracing/pdserve_metrics.h"
#include "transport/kv_transport.h"

namespace pdserve::prefill {

class PrefillHandler {
 public:
  // All pointers must outlive the handler. `metrics` may be null.
  PrefillHandler(Engine* engine, transport::KvSender* sender, std::string node_name,
                 const tracing::PdserveMetrics* metrics);

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* ctx,
                                    const v1::PrefillRequest* request,
                                    v1::PrefillResponse* response);

  // Transfers started and not yet finished (for drain and tests).
  int64_t in_flight() const { return in_flight_.load(); }

  // The router gave up on a request whose Prefill call may already have
  // replied (token #1 out) while its KV still waits for a decode node that
  // will never take it (the router cancelled Admit before it arrived):
  // stops the transfer, then drops the request, as a cancelled call does.
  // By transfer id when it is non-zero, else every call of `request_id`.
  // Returns whether a call was found.
  bool Abort(const std::string& request_id, uint64_t transfer_id);

 private:
  struct Call;
  void Forget(uint64_t transfer_id, Call* call);

  absl::Mutex calls_mu_;
  // Calls whose transfer has not finished, by transfer id.
  absl::flat_hash_map<uint64_t, std::weak_ptr<Call>> calls_ ABSL_GUARDED_BY(calls_mu_);
  Engine* engine_;
  transport::KvSender* sender_;
  std::string node_name_;
  const tracing::PdserveMetrics* metrics_;
  std::atomic<int64_t> in_flight_{0};
};

}  // namespace pdserve::prefill
