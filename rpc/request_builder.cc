#include "rpc/request_builder.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/secure_random.h"
#include "rpc/convert.h"

namespace pdserve::rpc {

std::string NewRequestId() {
  // Unguessable: an id is the handle for Abort.
  return absl::StrCat("req-", SecureRandomHex(16));
}

absl::StatusOr<RequestSpec> BuildRequest(const v1::GenerateRequest& req, const PromptContext& ctx) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  RequestSpec spec;
  spec.id = req.request_id().empty() ? NewRequestId() : req.request_id();
  if (spec.id.size() > 128 || !IsValidUtf8(spec.id))
    return bad("request_id must be UTF-8, at most 128 bytes");
  spec.sampling = FromProto(req.sampling());
  spec.stop = FromProto(req.stop());

  EncodeOptions enc;
  switch (req.prompt_case()) {
    case v1::GenerateRequest::kText: {
      const std::string& text = req.text();
      if (text.empty()) return bad("prompt is empty");
      if (static_cast<int64_t>(text.size()) > ctx.max_prompt_bytes) {
        return bad("prompt is ", text.size(), " bytes; the limit is ", ctx.max_prompt_bytes);
      }
      if (!IsValidUtf8(text)) return bad("prompt is not valid UTF-8");
      enc.add_special = req.has_add_special_tokens() ? req.add_special_tokens() : true;
      enc.parse_special = req.parse_special();  // else "<|im_end|>" in a prompt is text
      absl::StatusOr<std::vector<TokenId>> ids = ctx.tokenizer->Encode(text, enc);
      if (!ids.ok()) return bad("cannot tokenize prompt: ", ids.status().message());
      spec.prompt = std::move(*ids);
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      spec.prompt.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
      break;
    case v1::GenerateRequest::kChat: {
      if (!ctx.chat)
        return absl::FailedPreconditionError("this model has no supported chat template");
      std::vector<ChatMessage> messages;
      int64_t bytes = 0;
      for (const v1::ChatMessage& m : req.chat().messages()) {
        bytes += static_cast<int64_t>(m.content().size());
        bytes += static_cast<int64_t>(m.tool_calls_json().size());
        messages.push_back({m.role(), m.content(), m.tool_calls_json(), m.tool_call_id()});
      }
      bytes += static_cast<int64_t>(req.chat().tools_json().size());
      if (bytes > ctx.max_prompt_bytes)
        return bad("chat is ", bytes, " bytes; the limit is ", ctx.max_prompt_bytes);
      absl::StatusOr<ChatTemplate::Rendered> rendered = ctx.chat->RenderWithRanges(
          messages, /*add_generation_prompt=*/true, req.chat().tools_json());
      if (!rendered.ok()) return bad(rendered.status().message());
      // The template writes its special tokens out; what the messages hold
      // stays text unless the request opts in.
      enc.parse_special = true;
      if (!req.parse_special()) enc.literal_ranges = rendered->message_ranges;
      absl::StatusOr<std::vector<TokenId>> ids = ctx.tokenizer->Encode(rendered->text, enc);
      if (!ids.ok()) return bad("cannot tokenize chat: ", ids.status().message());
      spec.prompt = std::move(*ids);
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return bad("request has no prompt (set text, token_ids or chat)");
  }
  if (absl::Status s = ValidateRequest(spec, ctx.limits); !s.ok()) return s;
  return spec;
}

}  // namespace pdserve::rpc
