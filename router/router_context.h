// What every request on the router shares: the node registry, the dispatch
// queue, prompt handling, metrics and the exporters.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "router/node_registry.h"
#include "router/selection_policy.h"
#include "rpc/request_builder.h"
#include "tracing/otlp_file_exporter.h"
#include "tracing/pdserve_metrics.h"

namespace pdserve::router {

class GenerateCall;
class Dispatcher;

struct RouterConfig {
  int64_t kv_deadline_ms = 30000;    // budget for one request's KV transfer
  int32_t max_queue = 256;           // requests waiting for a node
  int64_t queue_timeout_ms = 60000;  // longest a request waits for a node
  size_t max_stream_events = 4096;   // per client stream, then it is closed
  std::string node_name = "router";
  // Retries on another pair when a node fails before token #1 reached the
  // client; also the most migrations of one stream after token #1.
  int32_t max_retries = 2;
  // Deadlines of the router's node calls. Prefill: kv_deadline_ms plus
  // prefill_ms_per_1k_tokens per 1,000 prompt tokens; Admit and mixed
  // Generate: that plus decode_ms_per_token per max_tokens.
  int64_t prefill_ms_per_1k_tokens = 60000;
  int64_t decode_ms_per_token = 1000;
  // A node whose heartbeat reports its engine stalled this long loses its
  // streams to other pairs (GenerateCall::NodeLost).
  int64_t migrate_after_stall_ms = 3000;
};

struct RouterContext {
  RouterConfig config;
  NodeRegistry* registry = nullptr;
  Dispatcher* dispatcher = nullptr;
  rpc::PromptContext prompt;
  tracing::PdserveMetrics metrics;
  tracing::Histogram* selection_seconds = nullptr;  // cost of each node choice
  tracing::Counter* retries = nullptr;              // requests sent to another pair; may be null
  tracing::Counter* migrations = nullptr;      // streams continued on another pair; may be null
  tracing::OtlpFileExporter* spans = nullptr;  // may be null
  FILE* timing_log = nullptr;                  // one JSON line per request; may be null
  absl::Mutex timing_log_mu;

  // Requests in flight by id, for Abort.
  absl::Mutex calls_mu;
  absl::flat_hash_map<std::string, std::weak_ptr<GenerateCall>> calls ABSL_GUARDED_BY(calls_mu);
};

}  // namespace pdserve::router
