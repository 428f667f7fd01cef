// A mixed (colocated) node's Generate RPC for the router: prefill and decode
// in one engine with chunked prefill, streamed as DecodeEvents.
#pragma once

#include <string>

#include <grpcpp/grpcpp.h>

#include "engine/engine.h"
#include "pdserve/v1/node.pb.h"
#include "tracing/pdserve_metrics.h"

namespace pdserve::node {

class GenerateHandler {
 public:
  GenerateHandler(Engine* engine, std::string node_name, const tracing::PdserveMetrics* metrics,
                  size_t max_stream_events = 4096);

  grpc::ServerWriteReactor<v1::DecodeEvent>* Generate(grpc::CallbackServerContext* ctx,
                                                      const v1::NodeRequest* request);

 private:
  Engine* engine_;
  std::string node_name_;
  const tracing::PdserveMetrics* metrics_;
  size_t max_stream_events_;
};

}  // namespace pdserve::node
