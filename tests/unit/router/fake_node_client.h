// A node the test scripts, behind the router's NodeClient seam. Every call
// the router makes is recorded; the test decides how it ends (reply, events,
// a status at any point) or sets the node to refuse calls outright, as a
// node whose port is closed does. Thread-safe: the router calls in from its
// dispatch and callback threads, the test drives from its own.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/node_client.h"

namespace pdserve::router::testing {

class FakeNodeCall : public NodeCall {
 public:
  enum class Kind { kPrefill, kAdmit, kGenerate };

  FakeNodeCall(Kind kind, NodeCallOptions options) : kind_(kind), options_(std::move(options)) {}

  // The router cancels: the call ends CANCELLED, as gRPC ends it.
  void Cancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
    }
    End(absl::CancelledError("cancelled by the router"), nullptr);
  }

  // Test side. A stream event; ignored once the call ended.
  void Event(const v1::DecodeEvent& event) {
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;
      ++events_in_flight_;
    }
    on_event_(event);
    bool run_end = false;
    {
      absl::MutexLock lock(&mu_);
      run_end = --events_in_flight_ == 0 && ended_ && !end_ran_;
      end_ran_ = end_ran_ || run_end;
    }
    // The call ended while the router handled the event (it cancelled):
    // its end follows the event, as gRPC's OnDone follows OnReadDone.
    if (run_end) RunEnd();
  }
  // The prefill node's reply (OK).
  void Reply(const v1::PrefillResponse& response) { End(absl::OkStatus(), &response); }
  // Ends the call with `status` (a stream's end, or a failed Prefill).
  void Finish(const absl::Status& status) { End(status, nullptr); }

  Kind kind() const { return kind_; }
  const NodeCallOptions& options() const { return options_; }
  bool cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  bool ended() const {
    absl::MutexLock lock(&mu_);
    return ended_;
  }

  // Set by FakeNodeClient when the call starts.
  v1::PrefillRequest prefill;
  v1::AdmitRequest admit;
  v1::NodeRequest generate;
  NodeClient::PrefillDone prefill_done;
  NodeClient::OnEvent on_event_;
  NodeClient::Done done;

 private:
  // Ends the call once; its callback runs outside the lock (it may call
  // back into Cancel) and after any event the router is still handling.
  void End(const absl::Status& status, const v1::PrefillResponse* response) {
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;
      ended_ = true;
      end_status_ = status;
      if (response != nullptr) end_response_ = *response;
      if (events_in_flight_ > 0) return;  // Event() runs it
      end_ran_ = true;
    }
    RunEnd();
  }
  void RunEnd() {
    NodeClient::PrefillDone p;
    NodeClient::Done d;
    absl::Status status;
    v1::PrefillResponse response;
    {
      absl::MutexLock lock(&mu_);
      p = std::move(prefill_done);
      d = std::move(done);
      status = end_status_;
      response = end_response_;
    }
    on_event_ = nullptr;
    if (p) p(status, response);
    if (d) d(status);
  }

  const Kind kind_;
  const NodeCallOptions options_;
  mutable absl::Mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int events_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool end_ran_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status end_status_ ABSL_GUARDED_BY(mu_);
  v1::PrefillResponse end_response_ ABSL_GUARDED_BY(mu_);
};

class FakeNodeClient : public NodeClient {
 public:
  using Kind = FakeNodeCall::Kind;

  // Refused: every call fails at once with UNAVAILABLE and the node reads as
  // not connected (a node that is down).
  void set_refuse(bool refuse) {
    absl::MutexLock lock(&mu_);
    refuse_ = refuse;
  }
  // Draining: every call fails at once with UNAVAILABLE from the node
  // itself; the connection stays up.
  void set_draining(bool draining) {
    absl::MutexLock lock(&mu_);
    draining_ = draining;
  }

  std::shared_ptr<NodeCall> Prefill(const v1::PrefillRequest& request,
                                    const NodeCallOptions& options, PrefillDone done) override {
    auto call = std::make_shared<FakeNodeCall>(Kind::kPrefill, options);
    call->prefill = request;
    call->prefill_done = std::move(done);
    return Started(call);
  }
  std::shared_ptr<NodeCall> Admit(const v1::AdmitRequest& request, const NodeCallOptions& options,
                                  OnEvent on_event, Done done) override {
    auto call = std::make_shared<FakeNodeCall>(Kind::kAdmit, options);
    call->admit = request;
    call->on_event_ = std::move(on_event);
    call->done = std::move(done);
    return Started(call);
  }
  std::shared_ptr<NodeCall> Generate(const v1::NodeRequest& request, const NodeCallOptions& options,
                                     OnEvent on_event, Done done) override {
    auto call = std::make_shared<FakeNodeCall>(Kind::kGenerate, options);
    call->generate = request;
    call->on_event_ = std::move(on_event);
    call->done = std::move(done);
    return Started(call);
  }
  // Polls answer with what set_info/set_load gave (UNAVAILABLE when refused).
  void GetInfo(const NodeCallOptions&, InfoDone done) override {
    absl::Status s;
    v1::NodeInfo value;
    {
      absl::MutexLock lock(&mu_);
      if (refuse_) s = absl::UnavailableError("Connection refused");
      value = info_;
    }
    done(s, value);
  }
  void GetLoad(const NodeCallOptions&, LoadDone done) override {
    absl::Status s;
    v1::NodeLoad value;
    {
      absl::MutexLock lock(&mu_);
      if (refuse_) s = absl::UnavailableError("Connection refused");
      value = load_;
    }
    done(s, value);
  }
  void set_info(const v1::NodeInfo& info) {
    absl::MutexLock lock(&mu_);
    info_ = info;
  }
  void set_load(const v1::NodeLoad& load) {
    absl::MutexLock lock(&mu_);
    load_ = load;
  }
  bool Connected() const override {
    absl::MutexLock lock(&mu_);
    return !refuse_;
  }
  // Aborts are recorded and answered OK at once (UNAVAILABLE when refused).
  void Abort(const v1::NodeAbortRequest& request, const NodeCallOptions&, Done done) override {
    absl::Status s;
    {
      absl::MutexLock lock(&mu_);
      aborts_.push_back(request);
      if (refuse_) s = absl::UnavailableError("Connection refused");
    }
    done(s);
  }
  std::vector<v1::NodeAbortRequest> aborts() const {
    absl::MutexLock lock(&mu_);
    return aborts_;
  }

  // The `index`th call of `kind` (0: the first), once the router made it;
  // null if it did not within `timeout`.
  std::shared_ptr<FakeNodeCall> WaitForCall(Kind kind, int index,
                                            absl::Duration timeout = absl::Seconds(5)) {
    absl::MutexLock lock(&mu_);
    auto have = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return Count(kind) > index; };
    mu_.AwaitWithTimeout(absl::Condition(&have), timeout);
    int seen = 0;
    for (const auto& c : calls_) {
      if (c->kind() == kind && seen++ == index) return c;
    }
    return nullptr;
  }
  int calls(Kind kind) const {
    absl::MutexLock lock(&mu_);
    return Count(kind);
  }

 private:
  int Count(Kind kind) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int n = 0;
    for (const auto& c : calls_) n += c->kind() == kind ? 1 : 0;
    return n;
  }
  std::shared_ptr<NodeCall> Started(std::shared_ptr<FakeNodeCall> call) {
    bool refuse, draining;
    {
      absl::MutexLock lock(&mu_);
      calls_.push_back(call);
      refuse = refuse_;
      draining = draining_;
    }
    if (refuse) {
      call->Finish(absl::UnavailableError("failed to connect: Connection refused"));
    } else if (draining) {
      call->Finish(absl::UnavailableError("the node is draining"));
    }
    return call;
  }

  mutable absl::Mutex mu_;
  bool refuse_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  v1::NodeInfo info_ ABSL_GUARDED_BY(mu_);
  v1::NodeLoad load_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeNodeCall>> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::NodeAbortRequest> aborts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve::router::testing
