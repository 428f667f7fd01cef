#include "prefill_node/prefill_handler.h"

#include <chrono>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "rpc/convert.h"

namespace pdserve::prefill {
namespace {

// The request as a PrefillRequest takes it. Everything from the request that
// reaches the transport is checked first: the node connects only to a
// well-formed endpoint, with a bounded budget.
absl::StatusOr<PrefillParams> ParsePrefill(const v1::PrefillRequest& request,
                                           const RequestLimits& limits, int64_t origin_ns) {
  PrefillParams p;
  p.spec = rpc::FromProto(request.request());
  p.origin_ns = origin_ns;
  if (absl::Status s = ValidateRequest(p.spec, limits); !s.ok()) return s;
  absl::StatusOr<transport::TransferSecret> secret =
      transport::TransferSecret::FromBytes(request.kv_secret());
  absl::StatusOr<std::chrono::milliseconds> budget =
      transport::KvBudgetFromRequest(request.kv_deadline_ms());
  if (absl::Status s = transport::ValidateKvEndpoint(request.kv_endpoint()); !s.ok()) return s;
  if (request.transfer_id() == 0) return absl::InvalidArgumentError("transfer_id is not set");
  if (!secret.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("kv_secret: ", secret.status().message()));
  }
  if (!budget.ok()) return budget.status();
  p.kv_endpoint = request.kv_endpoint();
  p.transfer_id = transport::TransferId{request.transfer_id()};
  p.secret = *secret;
  p.deadline = MonoClock::now() + *budget;
  return p;
}

}  // namespace

PrefillHandler::PrefillHandler(Engine* engine, transport::KvSender* sender, std::string node_name,
                               const tracing::PdserveMetrics* metrics) {
  node_.engine = engine;
  node_.sender = sender;
  node_.node_name = std::move(node_name);
  node_.metrics = metrics;
}

grpc::ServerUnaryReactor* PrefillHandler::Prefill(grpc::CallbackServerContext* ctx,
                                                  const v1::PrefillRequest* request,
                                                  v1::PrefillResponse* response) {
  absl::StatusOr<PrefillParams> params =
      ParsePrefill(*request, node_.engine->limits(), MonoNowNs());
  if (!params.ok()) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(rpc::ToGrpc(params.status()));
    return reactor;
  }
  return PrefillRequest::Start(&node_, *std::move(params), response);
}

bool PrefillHandler::Abort(const std::string& request_id, uint64_t transfer_id) {
  std::vector<std::shared_ptr<PrefillRequest>> found =
      node_.transfers.Find(request_id, transport::TransferId{transfer_id});
  for (const std::shared_ptr<PrefillRequest>& r : found) r->Cancel();
  // By request id alone, and no transfer of it here: the engine is told
  // anyway (nothing happens unless it knows the id).
  if (found.empty() && transfer_id == 0) node_.engine->Abort(request_id);
  return !found.empty();
}

}  // namespace pdserve::prefill
