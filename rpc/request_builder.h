// Turns a client's GenerateRequest into a validated, tokenized RequestSpec.
// Shared by the router and the colocated `serve` node; needs the tokenizer
// only, never the model weights.
#pragma once

#include <optional>

#include "absl/status/statusor.h"
#include "engine/text/chat_template.h"
#include "engine/text/request.h"
#include "engine/tokenizer/tokenizer.h"
#include "pdserve/v1/generate.pb.h"

namespace pdserve::rpc {

struct PromptContext {
  const Tokenizer* tokenizer = nullptr;
  std::optional<ChatTemplate> chat;  // absent: chat requests are refused
  RequestLimits limits;
  int32_t max_prompt_bytes = 1 << 20;
};

// InvalidArgument with a clear message for anything a client got wrong:
// no prompt, invalid UTF-8, prompt too long, bad sampling values, ...
absl::StatusOr<RequestSpec> BuildRequest(const v1::GenerateRequest& req, const PromptContext& ctx);

// A fresh request id ("req-" + 16 hex digits).
std::string NewRequestId();

}  // namespace pdserve::rpc
