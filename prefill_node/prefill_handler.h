// The prefill node's Prefill RPC: computes the prompt's KV with the engine,
// ships each layer to the decode node as soon as it is stored (so the
// transfer overlaps the later layers' compute), returns token #1 the moment
// it is sampled, and frees the blocks once the decode node acknowledged the
// whole transfer.
#pragma once

#include <string>

#include <grpcpp/grpcpp.h>

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

 private:
  struct Call;
  Engine* engine_;
  transport::KvSender* sender_;
  std::string node_name_;
  const tracing::PdserveMetrics* metrics_;
  std::atomic<int64_t> in_flight_{0};
};

}  // namespace pdserve::prefill
