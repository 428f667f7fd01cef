#include "decode_node/decode_handler.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "rpc/convert.h"

namespace pdserve::decode {
namespace {

// The request as a DecodeRequest takes it. Everything from the request that
// reaches the transport is checked first; the engine checks the rest when
// it reserves.
absl::StatusOr<DecodeParams> ParseAdmit(const v1::AdmitRequest& request, int64_t origin_ns) {
  DecodeParams p;
  p.spec = rpc::FromProto(request.request());
  p.origin_ns = origin_ns;
  absl::StatusOr<transport::TransferSecret> secret =
      transport::TransferSecret::FromBytes(request.kv_secret());
  absl::StatusOr<std::chrono::milliseconds> budget =
      transport::KvBudgetFromRequest(request.kv_deadline_ms());
  if (request.transfer_id() == 0) return absl::InvalidArgumentError("transfer_id is not set");
  if (!secret.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("kv_secret: ", secret.status().message()));
  }
  if (!budget.ok()) return budget.status();
  p.transfer_id = transport::TransferId{request.transfer_id()};
  p.secret = *secret;
  p.kv_budget = *budget;
  return p;
}

}  // namespace

DecodeHandler::DecodeHandler(Engine* engine, transport::KvReceiver* receiver, std::string node_name,
                             const tracing::PdserveMetrics* metrics, size_t max_stream_events) {
  node_.engine = engine;
  node_.receiver = receiver;
  node_.node_name = std::move(node_name);
  node_.metrics = metrics;
  node_.max_stream_events = max_stream_events;
}

grpc::ServerWriteReactor<v1::DecodeEvent>* DecodeHandler::Admit(grpc::CallbackServerContext* ctx,
                                                                const v1::AdmitRequest* request) {
  absl::StatusOr<DecodeParams> params = ParseAdmit(*request, MonoNowNs());
  if (!params.ok()) {
    auto* writer = new DecodeRequest::Writer(node_.max_stream_events, nullptr);
    writer->handle()->Finish(rpc::ToGrpc(params.status()));
    return writer;
  }
  return DecodeRequest::Start(&node_, *std::move(params));
}

}  // namespace pdserve::decode
