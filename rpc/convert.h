// Conversions between the wire contract (proto/pdserve/v1) and the C++
// structs the engine and router use. Done at the service edges only.
#pragma once

#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "engine/text/request.h"
#include "pdserve/v1/generate.pb.h"
#include "pdserve/v1/node.pb.h"

namespace pdserve::rpc {

// Sampling and stop parameters with the API's defaults for unset fields.
SamplingParams FromProto(const v1::SamplingParams& p);
StopParams FromProto(const v1::StopParams& p);
void ToProto(const SamplingParams& s, v1::SamplingParams* p);
void ToProto(const StopParams& s, v1::StopParams* p);

RequestSpec FromProto(const v1::NodeRequest& r);
void ToProto(const RequestSpec& spec, v1::NodeRequest* r);

v1::FinishReason ToProto(FinishReason r);
FinishReason FromProto(v1::FinishReason r);

// absl <-> gRPC status (the codes are numbered alike).
grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

// Default max_tokens when a request does not say.
inline constexpr int32_t kDefaultMaxTokens = 16;

}  // namespace pdserve::rpc
