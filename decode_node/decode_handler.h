// The decode node's Admit RPC: checks the request and hands it to a
// DecodeRequest (decode_node/decode_request.h), which reserves KV blocks
// (or says there is no room), posts them to the KV receiver so the prefill
// node's layers land directly in them, then joins the request to the
// continuous-batching decode loop with token #1 from the transfer's trailer
// and streams tokens #2.. back. A transfer that fails or passes its
// deadline ends the request with an explicit error and frees its blocks at
// once.
#pragma once

#include <cstddef>
#include <string>

#include <grpcpp/grpcpp.h>

#include "decode_node/decode_request.h"
#include "engine/engine.h"
#include "pdserve/v1/node.pb.h"
#include "tracing/pdserve_metrics.h"
#include "transport/kv_transport.h"

namespace pdserve::decode {

class DecodeHandler {
 public:
  // All pointers must outlive the handler. `metrics` may be null.
  DecodeHandler(Engine* engine, transport::KvReceiver* receiver, std::string node_name,
                const tracing::PdserveMetrics* metrics, size_t max_stream_events = 4096);

  grpc::ServerWriteReactor<v1::DecodeEvent>* Admit(grpc::CallbackServerContext* ctx,
                                                   const v1::AdmitRequest* request);

 private:
  DecodeContext node_;
};

}  // namespace pdserve::decode
