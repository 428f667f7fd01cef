// One client request on the router, from arrival to its last event:
// tokenize and validate, wait in the dispatch queue, send Admit to the
// decode node and Prefill to the prefill node at the same time, stream
// token #1 from the prefill reply at once and then the decode node's
// stream, assemble the per-stage timeline, and on client cancel or deadline
// cancel both node calls (which aborts the request on both nodes).
//
// Attempts: one dispatch is one Attempt (its node calls, contexts and
// reservations). When a node of the attempt fails (transport UNAVAILABLE,
// a KV transfer cut off) before any token reached the client, the call is
// queued again and dispatched to another pair, at most
// RouterConfig::max_retries times; events of a superseded attempt are
// ignored. The timeline records each retry as a "router.retry" stage.
//
// Migration: when the decode (or mixed) node fails after tokens reached the
// client (its stream breaks, it stops heartbeating, it reports a stall),
// the call is queued again with prompt + the tokens the client has as the
// new prompt and NodeRequest.n_resumed set, so the new pair's sampler and
// text stream continue where the client is: token-exact for greedy and
// seeded requests (an unseeded sampled request continues with a fresh
// generator). max_tokens counts down by the tokens already sent; usage
// stays the client's. At most RouterConfig::max_retries migrations; each is a
// "router.migrate" stage and counts in pdserve:router_migrations_total.
//
// Seams: the nodes are reached through NodeClient (router/node_client.h;
// gRPC in production, a scripted fake in tests/unit/router), the capacity
// an attempt reserved is its Placement (router/placement.h: given back once),
// and what a finished call reports is written by CallRecorder
// (router/call_recorder.h).
//
// Locking: mu_ guards the state. Nothing that can call back into the call
// (the response sink, whose overflow cancels the call; gRPC's StartCall and
// TryCancel; Dispatcher::Enqueue) runs under mu_: such work is posted with
// PostLocked and run in order by RunPosted after the lock is released, one
// thread at a time.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "engine/text/request.h"
#include "pdserve/v1/generate.pb.h"
#include "router/call_recorder.h"
#include "router/node_client.h"
#include "router/placement.h"
#include "router/router_context.h"
#include "rpc/stream_writer.h"
#include "tracing/stage_timeline.h"
#include "tracing/trace_context.h"

namespace pdserve::router {

// Where a request's events go: the gRPC stream, or the OpenAI-compatible
// HTTP front's SSE stream / JSON body.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  // False once the client is gone or the stream is over its buffer bound.
  virtual bool Write(v1::GenerateResponse response) = 0;
  // Ends the response; a non-OK status before any event is the call's error.
  virtual void Finish(const grpc::Status& status) = 0;
};

class GenerateCall : public std::enable_shared_from_this<GenerateCall> {
 public:
  // Raw bytes both ways: the router parses the request itself (see Start).
  using Writer = rpc::StreamWriter<grpc::ByteBuffer>;

  // Handles Generation.Generate; returns the reactor gRPC drives. Takes the
  // request's bytes: a request gRPC cannot parse (a proto3 string that is
  // not UTF-8) gets INVALID_ARGUMENT with a message instead of gRPC's empty
  // error.
  // `tenant` is the authenticated caller (rpc::Security::ClientTenant).
  static grpc::ServerWriteReactor<grpc::ByteBuffer>* Start(RouterContext* ctx,
                                                           grpc::CallbackServerContext* server_ctx,
                                                           const grpc::ByteBuffer* request,
                                                           const std::string& tenant);
  // Starts a request for any front end: validates, tokenizes and queues it;
  // every outcome reaches `sink`. The caller calls Cancel() if its client
  // goes away. `arrival_ns` is when the front end received the request.
  // The request id (the client's, or a random one) is scoped by `tenant`:
  // the client sees its own id, the router's Abort and the nodes see
  // ScopedId(tenant, id), so tenants' ids never collide or reveal each other.
  static std::shared_ptr<GenerateCall> Begin(RouterContext* ctx, const v1::GenerateRequest& request,
                                             const std::string& tenant,
                                             std::optional<std::string_view> traceparent,
                                             std::shared_ptr<ResponseSink> sink,
                                             int64_t arrival_ns);
  // "<tenant>/<id>": the id of a tenant's request on the router and the nodes.
  static std::string ScopedId(std::string_view tenant, std::string_view id);

  GenerateCall(RouterContext* ctx, int64_t arrival_ns);
  // The client went away: abort on both nodes, end the response.
  void Cancel();
  const RequestSpec& spec() const { return spec_; }

  const RequestShape& shape() const { return shape_; }
  const std::string& id() const { return spec_.id; }  // scoped by the tenant
  const std::string& client_id() const { return client_id_; }
  int64_t arrival_ns() const { return arrival_ns_; }
  // The dispatcher found nodes and reserved `placement` on them: start the
  // node calls. The call owns the placement from here on.
  void Dispatch(const Selection& selection, Placement placement);
  // The dispatcher gives up on it (queue timeout, nodes gone).
  void FailQueued(const absl::Status& status, tracing::ErrorKind kind);
  // Abort by id (Generation.Abort): ends the stream with finish ABORT.
  void Abort();
  // The router gave up on a node (heartbeats stopped, engine stalled): if
  // the current attempt still needs it, the call retries or migrates.
  void NodeLost(const std::string& node_id, const absl::Status& why);

  // One dispatch of the call: its nodes, node calls and reservations.
  struct Attempt {
    int number = 0;                // 0: the first
    int32_t n_resumed = 0;         // tokens the client had when this attempt started (migration)
    bool prefill_replied = false;  // the prefill node is no longer needed
    bool mixed = false;
    std::string prefill_id, decode_id;  // decode_id: the mixed node when mixed
    // The capacity reserved for this attempt: prefill tokens back when the
    // prefill node replied, decode blocks when the call leaves the decode
    // node, the rest when the attempt's last reference goes.
    Placement placement;
    // Set by the posted work that starts them (RunPosted), read only there.
    std::shared_ptr<NodeCall> prefill_call;
    std::shared_ptr<NodeCall> node_call;  // decode Admit or mixed Generate
    v1::NodeRequest node_req;             // the request as this attempt's nodes see it
    v1::PrefillResponse prefill_resp;
    // Token #1 reaches the client only once the decode node admitted the
    // request: a decode node that is gone fails Admit first, and the request
    // can still be retried elsewhere with nothing streamed.
    bool admitted = false;
    bool first_pending = false;  // the prefill reply came before `admitted`
    bool node_done = false;      // the decode stream ended OK before token #1 went out
    // P/D: the KV transfer's id, and whether the decode node has shown it
    // landed (a token or a result after token #1). Until then a cancelled
    // attempt also tells the prefill node by transfer id (Abort): its
    // Prefill call may have replied while the KV still waits for a decode
    // node that never saw Admit, and would hold its blocks to the deadline.
    uint64_t transfer_id = 0;
    bool kv_landed = false;
    bool transfer_abort_sent = false;
  };

  // Node-call events (NodeClient threads), for the attempt that made the call.
  void OnPrefillDone(Attempt* attempt, const absl::Status& status,
                     const v1::PrefillResponse& response);
  void OnNodeEvent(Attempt* attempt, const v1::DecodeEvent& event);
  void OnNodeDone(Attempt* attempt, const absl::Status& status);

 private:
  // The prefill node's reply (token #1) to the client.
  void FirstTokenLocked(Attempt* attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteChunkLocked(v1::Chunk chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompleteLocked(const v1::Complete& node_complete) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailLocked(const absl::Status& status, tracing::ErrorKind kind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A node of the current attempt failed: retry on another pair when no
  // token reached the client and retries remain, else fail the call.
  void NodeFailedLocked(const absl::Status& status, tracing::ErrorKind kind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the stream is over at the tokens the client has (the failed node
  // sent the last token but not its `complete`): then completes it.
  bool CompleteIfOverLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues the call again for another pair (a retry or a migration).
  void RequeueLocked(const absl::Status& status, tracing::ErrorKind kind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes nodes whose channel broke out of rotation (NodeRegistry::ReportFailure).
  void ReportNodeFailuresLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelNodeCallsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseNodesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendLocked(v1::GenerateResponse response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PostLocked(std::function<void()> fn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunPosted() ABSL_LOCKS_EXCLUDED(mu_);
  // The current attempt continues a migrated stream.
  bool Resumed() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return attempt_ != nullptr && attempt_->n_resumed > 0;
  }
  bool Current(const Attempt* a) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return attempt_ != nullptr && attempt_.get() == a;
  }

  RouterContext* ctx_;
  const CallRecorder recorder_;
  const int64_t arrival_ns_;
  RequestSpec spec_;       // spec_.id: ScopedId(tenant, client_id_)
  std::string client_id_;  // the id the client sent (or was given), in its responses
  RequestShape shape_;
  std::shared_ptr<ResponseSink> out_;
  tracing::SpanContext span_;
  int64_t arrival_unix_ns_ = 0;

  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;  // complete or error written
  bool dispatched_ ABSL_GUARDED_BY(mu_) = false;
  tracing::StageTimeline timeline_ ABSL_GUARDED_BY(mu_);
  // "router.retry" and "router.migrate"
  std::vector<v1::StageTiming> retry_stages_ ABSL_GUARDED_BY(mu_);
  int64_t dispatch_ns_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t retry_from_ns_ ABSL_GUARDED_BY(mu_) = 0;  // when the failed attempt ended
  int32_t retries_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t migrations_ ABSL_GUARDED_BY(mu_) = 0;
  bool migrating_ ABSL_GUARDED_BY(mu_) = false;            // the next dispatch continues a stream
  std::vector<int32_t> sent_tokens_ ABSL_GUARDED_BY(mu_);  // every token the client has
  int32_t n_attempts_ ABSL_GUARDED_BY(mu_) = 0;
  // The attempt in flight: null while queued (before the first dispatch and
  // between a failed attempt and its retry).
  std::shared_ptr<Attempt> attempt_ ABSL_GUARDED_BY(mu_);
  std::string prefill_id_ ABSL_GUARDED_BY(mu_), decode_id_ ABSL_GUARDED_BY(mu_);
  bool mixed_ ABSL_GUARDED_BY(mu_) = false;
  bool first_sent_ ABSL_GUARDED_BY(mu_) = false;            // token #1 is out
  std::vector<v1::DecodeEvent> held_ ABSL_GUARDED_BY(mu_);  // decode events before token #1
  int32_t cached_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t completion_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t first_chunk_ns_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_chunk_ns_ ABSL_GUARDED_BY(mu_) = 0;
  // Work to run after mu_ is released, in order (see RunPosted).
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
  bool running_posted_ ABSL_GUARDED_BY(mu_) = false;

  v1::NodeRequest node_req_;  // set before the first dispatch, then read-only
};

}  // namespace pdserve::router
