// One Admit call on a decode node: reserves KV blocks for the request (or
// says there is no room), posts them to the KV receiver so the prefill
// node's layers land directly in them, writes `admitted`, then joins the
// request to the continuous-batching decode loop with token #1 from the
// transfer's trailer (v1::KvTrailer) and streams tokens #2.. back. A
// transfer that fails or passes its deadline ends the request with an
// explicit error and frees its blocks at once.
//
// Lifecycle (State):
//   kReserving   asking the engine for blocks
//   kPosting     blocks reserved; posting them to the KV receiver and
//                writing `admitted`
//   kAwaitingKv  admitted: waiting for the prefill node's layers
//   kDecoding    the KV landed and the engine has token #1: streaming
//   kDone        the stream's end is decided (completed, failed or
//                cancelled); the engine may still be freeing the blocks
// Events: Start (reserve, post, admitted), OnKvLanded (the transport: OK
// with the trailer, failed, or past its deadline), OnEngineOutput (a token,
// the request's end), Cancel (the client went away, or the stream
// overflowed). Each event changes the state under mu_ and collects what to
// call (stream writes and Finish, KvReceiver::Cancel, Engine::Activate and
// Abort); the calls run after mu_ is released.
//
// The engine frees an imported request's blocks only once nothing writes
// into them: it is told to Abort at most once, after Reserve returned and
// when no Post of its blocks is live (never posted, or the Post's done
// callback ran). A cancel that comes while Start reserves or posts is acted
// on by Start once Reserve or Post returned; token #1 that lands while
// Start posts is given to the engine after `admitted` is written.
//
// Lifetime: the engine's output callback holds the request from Reserve
// until the engine drops the request; Start holds it while it runs. The
// stream's cancel hook and the transport's done callback hold weak
// references: when the request is gone, the engine no longer has it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "pdserve/v1/node.pb.h"
#include "rpc/stream_writer.h"
#include "tracing/pdserve_metrics.h"
#include "transport/kv_transport.h"

namespace pdserve::decode {

// What every request of the node shares; owned by DecodeHandler, outlives
// its requests.
struct DecodeContext {
  Engine* engine = nullptr;
  transport::KvReceiver* receiver = nullptr;
  std::string node_name;
  const tracing::PdserveMetrics* metrics = nullptr;  // may be null
  size_t max_stream_events = 4096;
};

// An Admit RPC's request, checked (see DecodeHandler::Admit).
struct DecodeParams {
  RequestSpec spec;
  transport::TransferId transfer_id;
  transport::TransferSecret secret;
  std::chrono::milliseconds kv_budget{0};  // from the Post on
  int64_t origin_ns = 0;                   // when the node received the call
};

class DecodeRequest : public std::enable_shared_from_this<DecodeRequest> {
 public:
  using Writer = rpc::StreamWriter<v1::DecodeEvent>;
  enum class State { kReserving, kPosting, kAwaitingKv, kDecoding, kDone };

  // Starts the request; returns the reactor gRPC drives.
  static grpc::ServerWriteReactor<v1::DecodeEvent>* Start(DecodeContext* node, DecodeParams params);

  DecodeRequest(DecodeContext* node, DecodeParams params);

  // The client went away or stopped reading: stops the transfer into the
  // blocks, then drops the request from the engine.
  void Cancel();

 private:
  // What an event decided to call, run after mu_ is released, in this order.
  struct Calls {
    std::vector<v1::DecodeEvent> events;  // written in order
    bool finish = false;                  // then the stream ends with `status`
    grpc::Status status;
    bool cancel_post = false;
    bool abort_engine = false;
    bool activate = false;  // with `first_tokens`
    std::vector<TokenId> first_tokens;
  };

  // The steps of Start: the blocks to post (none when the request ended
  // there); whether to admit.
  std::optional<std::vector<BlockId>> Reserve();
  bool Post(std::vector<BlockId> blocks);
  void Admitted(int32_t n_blocks);

  // Events.
  void OnKvLanded(absl::Status status, const std::string& trailer, transport::ReceiveTiming timing);
  void OnEngineOutput(const SeqOutput& out);

  // Ends the stream with an error event and `status` (KV failures).
  void FailLocked(Calls& calls, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Posts the engine Abort once it is due and safe (see the header).
  void AbortEngineIfDueLocked(Calls& calls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(Calls calls) ABSL_LOCKS_EXCLUDED(mu_);
  v1::DecodeEvent CompleteEvent(const SeqOutput& out, int64_t kv_first_ns,
                                int64_t kv_last_ns) const;

  DecodeContext* const node_;
  const std::string id_;
  DecodeParams params_;  // spec moves to the engine at Reserve
  std::shared_ptr<Writer::Handle> out_;

  absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kReserving;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool reserved_ ABSL_GUARDED_BY(mu_) = false;      // Reserve returned the blocks
  bool engine_ended_ ABSL_GUARDED_BY(mu_) = false;  // its last output came: blocks freed
  bool abort_posted_ ABSL_GUARDED_BY(mu_) = false;
  bool post_live_ ABSL_GUARDED_BY(mu_) = false;  // posting or posted: the receiver may write
  bool kv_failed_ ABSL_GUARDED_BY(mu_) = false;  // the Post failed or its transfer did
  // Token #1 landed while Start was posting: activated once `admitted` is out.
  bool landed_early_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<TokenId> first_tokens_ ABSL_GUARDED_BY(mu_);
  // When the first and the last KV layer landed.
  int64_t kv_first_ns_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_last_ns_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace pdserve::decode
