// The calls the router makes to one node, behind an interface: gRPC in
// production (GrpcNodeClient), a scriptable fake in router tests
// (tests/unit/router/fake_node_client.h), so a GenerateCall can be driven
// without a network or a model.
//
// Every call is asynchronous and has a deadline. Its outcome is an
// absl::Status handed to `done`, which runs exactly once, on a thread of the
// client's choosing (possibly inside the call that started it, e.g. when the
// node is unknown); a streaming call's `on_event` runs before `done` and
// never concurrently with itself.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "pdserve/v1/node.grpc.pb.h"

namespace pdserve::router {

// A call in flight. Cancel() asks the node to drop it (the node aborts the
// request); `done` still runs, with CANCELLED unless the call had already
// ended. Safe from any thread, any number of times, before or after `done`.
class NodeCall {
 public:
  virtual ~NodeCall() = default;
  virtual void Cancel() = 0;
};

struct NodeCallOptions {
  absl::Time deadline = absl::InfiniteFuture();
  std::string traceparent;  // W3C trace context for the node's spans; empty: none
};

class NodeClient {
 public:
  using PrefillDone = std::function<void(const absl::Status&, const v1::PrefillResponse&)>;
  using OnEvent = std::function<void(const v1::DecodeEvent&)>;
  using Done = std::function<void(const absl::Status&)>;

  virtual ~NodeClient() = default;
  // Prefill node: compute the prompt, send its KV, reply with token #1.
  virtual std::shared_ptr<NodeCall> Prefill(const v1::PrefillRequest& request,
                                            const NodeCallOptions& options, PrefillDone done) = 0;
  // Decode node: reserve blocks for the KV, then stream the tokens after #1.
  virtual std::shared_ptr<NodeCall> Admit(const v1::AdmitRequest& request,
                                          const NodeCallOptions& options, OnEvent on_event,
                                          Done done) = 0;
  // Mixed node: the whole request, token #1 included.
  virtual std::shared_ptr<NodeCall> Generate(const v1::NodeRequest& request,
                                             const NodeCallOptions& options, OnEvent on_event,
                                             Done done) = 0;
  // The node's identity and its load now (static nodes, which do not
  // register, are polled with these).
  using InfoDone = std::function<void(const absl::Status&, const v1::NodeInfo&)>;
  using LoadDone = std::function<void(const absl::Status&, const v1::NodeLoad&)>;
  virtual void GetInfo(const NodeCallOptions& options, InfoDone done) = 0;
  virtual void GetLoad(const NodeCallOptions& options, LoadDone done) = 0;
  // Drops a request the router gave up on (a prefill node: by transfer id,
  // once its Prefill call has replied and only the KV transfer is left).
  virtual void Abort(const v1::NodeAbortRequest& request, const NodeCallOptions& options,
                     Done done) = 0;
  // Whether the connection to the node is up now. A call that failed
  // UNAVAILABLE on a connected node was refused by the node itself
  // (draining), not lost in the network.
  virtual bool Connected() const = 0;
};

// Over a gRPC channel (TLS and credentials are the channel's).
class GrpcNodeClient final : public NodeClient {
 public:
  explicit GrpcNodeClient(std::shared_ptr<grpc::Channel> channel);
  std::shared_ptr<NodeCall> Prefill(const v1::PrefillRequest& request,
                                    const NodeCallOptions& options, PrefillDone done) override;
  std::shared_ptr<NodeCall> Admit(const v1::AdmitRequest& request, const NodeCallOptions& options,
                                  OnEvent on_event, Done done) override;
  std::shared_ptr<NodeCall> Generate(const v1::NodeRequest& request, const NodeCallOptions& options,
                                     OnEvent on_event, Done done) override;
  void GetInfo(const NodeCallOptions& options, InfoDone done) override;
  void GetLoad(const NodeCallOptions& options, LoadDone done) override;
  void Abort(const v1::NodeAbortRequest& request, const NodeCallOptions& options,
             Done done) override;
  bool Connected() const override;

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Node::Stub> stub_;
};

}  // namespace pdserve::router
