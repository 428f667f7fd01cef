// The prefill node's Prefill RPC: checks the request and hands it to a
// PrefillRequest (prefill_node/prefill_request.h), which computes the
// prompt's KV with the engine, ships each layer to the decode node as soon
// as it is stored, returns token #1 the moment it is sampled, and frees the
// blocks once the decode node acknowledged the whole transfer.
#pragma once

#include <cstdint>
#include <string>

#include <grpcpp/grpcpp.h>

#include "engine/engine.h"
#include "pdserve/v1/node.pb.h"
#include "prefill_node/prefill_request.h"
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
  int64_t in_flight() const { return node_.in_flight.load(); }

  // The router gave up on a request whose Prefill call may already have
  // replied (token #1 out) while its KV still waits for a decode node that
  // will never take it (the router cancelled Admit before it arrived):
  // stops the transfer, then drops the request, as a cancelled call does.
  // By transfer id when it is non-zero, else every call of `request_id`.
  // Returns whether a call was found.
  bool Abort(const std::string& request_id, uint64_t transfer_id);

 private:
  PrefillContext node_;
};

}  // namespace pdserve::prefill
