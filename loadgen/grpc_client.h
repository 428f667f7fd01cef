// LoadClient for a pdserve router over gRPC: the callback API, one reactor
// per request, all streams multiplexed on one channel.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "loadgen/client.h"
#include "pdserve/v1/generate.grpc.pb.h"

namespace pdserve::loadgen {

class GrpcClient : public LoadClient {
 public:
  explicit GrpcClient(const std::string& address);
  // Cancels what is still in flight and waits for every reactor to finish.
  ~GrpcClient() override;

  std::string kind() const override { return "grpc"; }
  bool accepts_token_ids() const override { return true; }
  absl::StatusOr<ModelDescription> GetModelInfo(absl::Duration timeout) override;
  void Send(const RequestInput& input, DoneCallback done) override;
  void CancelAll() override;

 private:
  class Reactor;
  // One call's context and cancel mark, shared by its reactor and live_ so
  // CancelAll never touches a reactor that is finishing.
  struct Call {
    grpc::ClientContext context;
    std::atomic<bool> cancelled{false};
  };
  void Finished(const Call* call);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  absl::Mutex mu_;
  std::vector<std::shared_ptr<Call>> live_ ABSL_GUARDED_BY(mu_);
};

// Converts the events of one Generate stream into an outcome; separate from
// the reactor so the tests can drive it with hand-made responses.
class GenerateStreamRecorder {
 public:
  void OnResponse(const v1::GenerateResponse& response, int64_t now_ns);
  // Fills `out` from the stream and its final status.
  void Finish(const grpc::Status& status, bool cancelled_by_us, RequestOutcome* out);

 private:
  std::vector<int64_t> chunk_ns_;
  int32_t chunk_tokens_ = 0;
  bool have_complete_ = false;
  v1::Complete complete_;
  std::string stream_error_;
};

}  // namespace pdserve::loadgen
