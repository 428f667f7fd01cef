// One Prefill call on a prefill node, from the RPC to the decode node's
// acknowledgement of its KV: opens the KV transfer, has the engine compute
// the prompt (each layer ships as soon as it is stored, so the transfer
// overlaps the later layers' compute), replies with token #1 the moment it
// is sampled and sends it to the decode node in the transfer's trailer
// (v1::KvTrailer), then lets the engine keep or free the blocks once the
// transfer ended.
//
// Lifecycle (State):
//   kOpening    the transfer to the decode node is being opened
//   kSubmitting the transfer is open; the engine is being given the request
//   kComputing  the engine has it; stored layers ship as they come
//   kShipping   token #1 replied and in the trailer; the engine holds the
//               blocks until the transfer ends (then Release)
//   kEnding     cancelled or failed, the reply sent: waiting for the engine
//               and the transport to let go
//   kDone       neither the engine nor the transport can call it any more
// Events: Start (opens the transfer, then submits), OnLayerStored (engine),
// token #1 and the engine ending it before token #1 (OnEngineOutput), the
// transfer's end (OnTransferDone: OK, failed, or past its deadline, which
// the transport enforces), Cancel (the router's RPC cancelled, or
// PrefillHandler::Abort). Each event changes the state under mu_ and
// collects what to call (gRPC Finish, KvSendHandle::Abort/Finish,
// Engine::Abort/Release); the calls run after mu_ is released.
//
// The engine is told to Abort at most once, when the transfer failed (a
// cancel aborts it) and both of these hold: the transport no longer reads
// the blocks (its done callback ran), and Submit returned (an Abort posted
// earlier would find nothing and be lost). Whichever comes second posts it.
// So a cancel that comes before the transfer or the engine request exist
// is acted on by whoever comes second, and a transfer that fails while the
// engine computes frees the blocks whether token #1 was sampled before or
// after the Abort landed (a held request is aborted silently).
//
// Lifetime: the request holds itself (self_) from Start until the engine
// (from Submit to its last output callback; it also calls the request as
// its KvSink, by raw pointer, meanwhile) and the transport (from
// StartTransfer to its done callback) are both done with it; gRPC's
// reactor holds it until OnDone. The output and done callbacks hold weak
// references, locked for the length of each event. The reply goes out at
// most once; after it, gRPC may free `response`, so nothing touches it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "pdserve/v1/node.pb.h"
#include "tracing/pdserve_metrics.h"
#include "transport/device_send_handle.h"
#include "transport/kv_transport.h"

namespace pdserve::prefill {

class PrefillRequest;

// The prefill node's requests by transfer id, from before their transfer is
// opened until it ended: what PrefillHandler::Abort looks up. Thread-safe.
class OpenTransfers {
 public:
  // False when the id is taken (the transport refuses a duplicate anyway).
  bool Add(transport::TransferId id, std::weak_ptr<PrefillRequest> request);
  // Removes id's entry if it is `request`'s.
  void Remove(transport::TransferId id, const PrefillRequest* request);
  // The live requests named `request_id`: of transfer `id`, or of any
  // transfer when id is 0.
  std::vector<std::shared_ptr<PrefillRequest>> Find(const std::string& request_id,
                                                    transport::TransferId id);

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<transport::TransferId, std::weak_ptr<PrefillRequest>> by_id_
      ABSL_GUARDED_BY(mu_);
};

// What every request of the node shares; owned by PrefillHandler, outlives
// its requests.
struct PrefillContext {
  Engine* engine = nullptr;
  transport::KvSender* sender = nullptr;
  std::string node_name;
  const tracing::PdserveMetrics* metrics = nullptr;  // may be null
  OpenTransfers transfers;
  std::atomic<int64_t> in_flight{0};  // transfers started and not yet ended
};

// A Prefill RPC's request, checked (see PrefillHandler::Prefill).
struct PrefillParams {
  RequestSpec spec;
  std::string kv_endpoint;
  transport::TransferId transfer_id;
  transport::TransferSecret secret;
  transport::Deadline deadline;  // the whole transfer's
  int64_t origin_ns = 0;         // when the node received the call
};

class PrefillRequest : public KvSink, public std::enable_shared_from_this<PrefillRequest> {
 public:
  enum class State { kOpening, kSubmitting, kComputing, kShipping, kEnding, kDone };

  // Starts the request; returns the reactor gRPC drives. `response` is the
  // RPC's, filled with token #1 unless the call ended first.
  static grpc::ServerUnaryReactor* Start(PrefillContext* node, PrefillParams params,
                                         v1::PrefillResponse* response);

  PrefillRequest(PrefillContext* node, PrefillParams params, v1::PrefillResponse* response);

  const std::string& id() const { return id_; }

  // The router gave up (its RPC cancelled, or Abort after the reply): stops
  // the transfer, then drops the request from the engine.
  void Cancel();

  // KvSink (engine thread, during the forward pass): ship this layer now.
  // The views stay valid: the engine holds the blocks until Release or
  // Abort, which come only after the transfer ended.
  void OnLayerStored(int32_t layer, const std::vector<BlockId>& blocks) override;
  // GPU engines: hand the layer over with its device event, so neither the
  // engine nor this thread waits for the GPU.
  bool TakesDeviceEvents() const override { return device_xfer_ != nullptr; }
  void OnLayerStoredOnDevice(int32_t layer, const std::vector<BlockId>& blocks,
                             void* stored_event) override;

 private:
  class Reactor;
  // What an event decided to call, run after mu_ is released, in this order.
  struct Calls {
    grpc::ServerUnaryReactor* finish = nullptr;  // reply with `status`
    grpc::Status status;
    std::string trailer;  // send (KvSendHandle::Finish) when set
    bool send_trailer = false;
    bool abort_transfer = false;
    bool abort_engine = false;
    bool release_engine = false;
    std::shared_ptr<PrefillRequest> release_self;  // dropped last
  };

  // The steps of Start.
  void OpenTransfer(grpc::ServerUnaryReactor* reactor);
  void Submit();

  // Events.
  void OnTransferOpened(std::unique_ptr<transport::KvSendHandle> xfer);
  void OnTransferNotOpened(const absl::Status& status);
  void OnSubmitted(const absl::Status& status);
  void OnEngineOutput(const SeqOutput& out);
  void OnFirstToken(const SeqOutput& out);
  void OnEngineEnded(const SeqOutput& out);
  void OnTransferDone(const absl::Status& status);

  // Takes the reply (once); `response`, when given, becomes the RPC's.
  void ReplyLocked(Calls& calls, grpc::Status status,
                   std::optional<v1::PrefillResponse> response = std::nullopt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Posts the engine Abort once it is due and can land (see the header).
  void AbortEngineIfDueLocked(Calls& calls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // kDone once neither the engine nor the transport can call back.
  void SettleLocked(Calls& calls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(Calls calls) ABSL_LOCKS_EXCLUDED(mu_);
  void SendLayer(int32_t layer, const std::vector<BlockId>& blocks, bool on_device,
                 void* stored_event);
  v1::PrefillResponse FirstTokenResponse(const SeqOutput& out) const;

  PrefillContext* const node_;
  const std::string id_;
  PrefillParams params_;  // spec moves to the engine at Submit

  // Set under mu_ once the transfer is open, before Submit, then never
  // changed: the engine thread reads them without the lock.
  std::unique_ptr<transport::KvSendHandle> xfer_;
  transport::DeviceKvSendHandle* device_xfer_ = nullptr;  // xfer_, when it takes device events

  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kOpening;
  grpc::ServerUnaryReactor* reactor_ ABSL_GUARDED_BY(mu_) = nullptr;  // null once replied
  v1::PrefillResponse* response_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool transfer_live_ ABSL_GUARDED_BY(mu_) = false;  // opening or open: its callback may come
  bool transfer_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool engine_live_ ABSL_GUARDED_BY(mu_) = false;        // submitting or submitted: may call back
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;          // Submit returned OK
  bool engine_has_blocks_ ABSL_GUARDED_BY(mu_) = false;  // submitted, not released or aborted
  std::shared_ptr<PrefillRequest> self_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve::prefill
