#include "router/node_client.h"

#include <utility>

#include "rpc/convert.h"

namespace pdserve::router {
namespace {

void Prepare(const NodeCallOptions& options, grpc::ClientContext* ctx) {
  if (!options.traceparent.empty()) ctx->AddMetadata("traceparent", options.traceparent);
  if (options.deadline != absl::InfiniteFuture()) {
    ctx->set_deadline(absl::ToChronoTime(options.deadline));
  }
}

// One unary Prefill. The gRPC callback holds it until the reply.
class GrpcPrefillCall final : public NodeCall {
 public:
  GrpcPrefillCall(const v1::PrefillRequest& request, NodeClient::PrefillDone done)
      : request_(request), done_(std::move(done)) {}
  void Cancel() override { ctx_.TryCancel(); }

  grpc::ClientContext ctx_;
  v1::PrefillRequest request_;
  v1::PrefillResponse response_;
  NodeClient::PrefillDone done_;  // cleared once run: it holds the caller
};

// A DecodeEvent stream (decode Admit, mixed Generate). Holds itself until
// gRPC's OnDone.
class GrpcEventCall final : public NodeCall, public grpc::ClientReadReactor<v1::DecodeEvent> {
 public:
  GrpcEventCall(NodeClient::OnEvent on_event, NodeClient::Done done)
      : on_event_(std::move(on_event)), done_(std::move(done)) {}
  void Cancel() override { ctx_.TryCancel(); }

  void Begin(std::shared_ptr<GrpcEventCall> self) {
    self_ = std::move(self);
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    on_event_(event_);
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<GrpcEventCall> keep = std::move(self_);  // freed when this returns
    NodeClient::Done done = std::move(done_);
    on_event_ = nullptr;
    done(rpc::FromGrpc(status));
  }

  grpc::ClientContext ctx_;
  v1::AdmitRequest admit_;
  v1::NodeRequest generate_;

 private:
  NodeClient::OnEvent on_event_;
  NodeClient::Done done_;
  v1::DecodeEvent event_;
  std::shared_ptr<GrpcEventCall> self_;
};

}  // namespace

GrpcNodeClient::GrpcNodeClient(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)), stub_(v1::Node::NewStub(channel_)) {}

std::shared_ptr<NodeCall> GrpcNodeClient::Prefill(const v1::PrefillRequest& request,
                                                  const NodeCallOptions& options,
                                                  PrefillDone done) {
  auto call = std::make_shared<GrpcPrefillCall>(request, std::move(done));
  Prepare(options, &call->ctx_);
  stub_->async()->Prefill(&call->ctx_, &call->request_, &call->response_,
                          [call](grpc::Status status) {
                            NodeClient::PrefillDone d = std::move(call->done_);
                            d(rpc::FromGrpc(status), call->response_);
                          });
  return call;
}

std::shared_ptr<NodeCall> GrpcNodeClient::Admit(const v1::AdmitRequest& request,
                                                const NodeCallOptions& options, OnEvent on_event,
                                                Done done) {
  auto call = std::make_shared<GrpcEventCall>(std::move(on_event), std::move(done));
  Prepare(options, &call->ctx_);
  call->admit_ = request;
  stub_->async()->Admit(&call->ctx_, &call->admit_, call.get());
  call->Begin(call);
  return call;
}

std::shared_ptr<NodeCall> GrpcNodeClient::Generate(const v1::NodeRequest& request,
                                                   const NodeCallOptions& options, OnEvent on_event,
                                                   Done done) {
  auto call = std::make_shared<GrpcEventCall>(std::move(on_event), std::move(done));
  Prepare(options, &call->ctx_);
  call->generate_ = request;
  stub_->async()->Generate(&call->ctx_, &call->generate_, call.get());
  call->Begin(call);
  return call;
}

namespace {
// One unary call (GetInfo, GetLoad, Abort); the gRPC callback holds it.
template <typename Response, typename Request = v1::GetLoadRequest>
struct GrpcUnary {
  grpc::ClientContext ctx;
  Request request;
  Response response;
};
}  // namespace

void GrpcNodeClient::GetInfo(const NodeCallOptions& options, InfoDone done) {
  auto poll = std::make_shared<GrpcUnary<v1::NodeInfo>>();
  Prepare(options, &poll->ctx);
  stub_->async()->GetInfo(&poll->ctx, &poll->request, &poll->response,
                          [poll, done = std::move(done)](grpc::Status status) {
                            done(rpc::FromGrpc(status), poll->response);
                          });
}

void GrpcNodeClient::GetLoad(const NodeCallOptions& options, LoadDone done) {
  auto poll = std::make_shared<GrpcUnary<v1::NodeLoad>>();
  Prepare(options, &poll->ctx);
  stub_->async()->GetLoad(&poll->ctx, &poll->request, &poll->response,
                          [poll, done = std::move(done)](grpc::Status status) {
                            done(rpc::FromGrpc(status), poll->response);
                          });
}

void GrpcNodeClient::Abort(const v1::NodeAbortRequest& request, const NodeCallOptions& options,
                           Done done) {
  auto call = std::make_shared<GrpcUnary<v1::NodeAbortResponse, v1::NodeAbortRequest>>();
  call->request = request;
  Prepare(options, &call->ctx);
  stub_->async()->Abort(
      &call->ctx, &call->request, &call->response,
      [call, done = std::move(done)](grpc::Status status) { done(rpc::FromGrpc(status)); });
}

bool GrpcNodeClient::Connected() const { return channel_->GetState(false) == GRPC_CHANNEL_READY; }

}  // namespace pdserve::router
