// OpenAI's wire format for /v1/completions and /v1/chat/completions: parses
// a request body into a v1::GenerateRequest, and turns the GenerateCall's
// events into OpenAI's response objects (whole, or SSE chunks). No server
// here, so every shape is unit-tested without sockets.
//
// Unknown request fields are ignored (as OpenAI-compatible servers do, so
// new client versions keep working); known fields we cannot honour (echo,
// suffix, logit_bias, the deprecated functions) are refused with a 400 that
// names the parameter. n (1..16) and completions' best_of (n..16; not with
// stream) become samples that share one prefill (SamplingParams.n). response_format json_object /
// json_schema become a grammar the nodes sample under (the schema is checked here: a 400). Every
// number is range-checked here (a 400 naming the field) before it is narrowed to the proto's type.
// Extensions: vLLM's sampling fields, and "parse_special" (special tokens in
// the prompt or messages are recognised; default: they are text).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/tokenizer/tokenizer.h"
#include "pdserve/v1/generate.pb.h"
#include "router/openai_tools.h"

namespace pdserve::router::openai {

enum class Endpoint { kCompletions, kChat };

// OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type = "server_error";
  std::string param;          // empty: null
  std::string code;           // empty: null
  std::string retry_after_s;  // 429: the Retry-After header
};
std::string ErrorBody(const ApiError& error);
ApiError BadRequest(std::string message, std::string param = "");
// The HTTP error for a GenerateCall outcome (a gRPC status code number).
ApiError ErrorForStatus(int grpc_code, std::string message);

struct ParseOptions {
  // Names a request may use in "model"; the first is the one /v1/models lists.
  std::vector<std::string> model_names;
  int32_t chat_default_max_tokens = 512;  // chat requests without max_tokens
  // Token ids (prompt, stop_token_ids) must be below this; 0: only int32.
  int32_t n_vocab = 0;
};

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;  // as the client named it (echoed back)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Completions: "logprobs": N (alternatives per token, 0..20); -1 when off.
  int32_t completion_logprobs = -1;
  // Chat: "logprobs": true and "top_logprobs": N.
  bool chat_logprobs = false;
  int32_t chat_top_logprobs = 0;
  int32_t n = 1;        // choices returned
  int32_t best_of = 1;  // samples generated (>= n); the best n are returned
  std::string user;     // accepted and logged, nothing else
  ToolRequest tools;    // chat: tools and tool_choice
  v1::GenerateRequest request;
};

// Parses and checks `body`. On failure returns the error to send (400 for
// bad input, 404 for an unknown model).
std::optional<ApiError> ParseRequest(Endpoint endpoint, std::string_view body,
                                     const ParseOptions& options, ParsedRequest* out);

// The /v1/models list and one entry.
std::string ModelList(const std::vector<std::string>& names, int64_t created);
std::string ModelObject(const std::string& name, int64_t created);

// Turns one request's events into OpenAI objects. Not thread-safe: one
// request's events arrive in order from one GenerateCall.
class ResponseBuilder {
 public:
  // `tokenizer` spells out tokens for logprobs; it outlives the builder.
  ResponseBuilder(const ParsedRequest& request, std::string id, int64_t created,
                  const Tokenizer* tokenizer);

  // Streaming: the SSE "data:" payloads (JSON texts) for a chunk, and for the
  // end of the request (finish chunk, then the usage chunk when asked for).
  // The caller adds "data: [DONE]".
  std::vector<std::string> StreamChunk(const v1::Chunk& chunk);
  std::vector<std::string> StreamComplete(const v1::Complete& complete);

  // Whole response: feed every chunk, then build the body.
  void Accumulate(const v1::Chunk& chunk);
  std::string FinalBody(const v1::Complete& complete) const;

  const std::string& id() const { return id_; }

 private:
  struct TokenLogprob {
    int32_t token_id;
    float logprob;
    std::vector<std::pair<int32_t, float>> top;
  };
  // One sample's state (index = its position in choices_).
  struct Choice {
    ToolCallStreamer tool_streamer;
    bool role_sent = false;      // chat streams open with the assistant role
    bool finished = false;       // its finish chunk went out
    int64_t streamed_bytes = 0;  // completions: text_offset of the next token
    std::string text;            // whole response: text so far
    std::vector<TokenLogprob> logprobs;
    double cumulative_logprob = 0;  // best_of picks by it
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  };
  Choice* ChoiceOf(const v1::Chunk& chunk);
  void StreamFinish(int32_t index, v1::FinishReason reason, std::vector<std::string>* out);
  std::vector<TokenLogprob> LogprobsOf(const v1::Chunk& chunk) const;
  // The "logprobs" value of a choice for these tokens (null when not asked).
  std::string LogprobsJson(const std::vector<TokenLogprob>& tokens, int64_t text_offset) const;

  const Endpoint endpoint_;
  const std::string model_;
  const std::string id_;
  const int64_t created_;
  const bool include_usage_;
  const bool want_logprobs_;
  const Tokenizer* const tokenizer_;
  ToolRequest tools_;            // tool calls are parsed from the output when enabled
  const int32_t n_;              // choices returned
  std::vector<Choice> choices_;  // one per sample generated (best_of of them)
};

std::string FinishReasonName(v1::FinishReason reason);

}  // namespace pdserve::router::openai
