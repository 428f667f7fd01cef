// libFuzzer target for the OpenAI JSON request parser
// (router/openai_protocol.h): any body must parse into a request whose every
// value is in range, or be refused with a 400/404 whose body is valid JSON;
// never crash or leak. A parsed request's responses are built too, and must
// be JSON. The first input byte picks the endpoint.
//   build-san/bin/openai_request_fuzz -max_total_time=600 tests/fuzz/corpus/openai_request
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/check.h"
#include "engine/text/request.h"
#include "nlohmann/json.hpp"
#include "router/openai_protocol.h"

namespace {

namespace openai = pdserve::router::openai;
constexpr int32_t kVocab = 49152;

void CheckInRange(const pdserve::v1::GenerateRequest& req) {
  const pdserve::v1::SamplingParams& s = req.sampling();
  if (s.has_temperature()) {
    PDS_CHECK(s.temperature() == 0 ||
              (s.temperature() >= pdserve::kMinSamplingTemperature && s.temperature() <= 2))
        << s.temperature();
  }
  if (s.has_top_p()) PDS_CHECK(s.top_p() > 0 && s.top_p() <= 1) << s.top_p();
  if (s.has_top_k()) PDS_CHECK(s.top_k() >= 0 && s.top_k() <= pdserve::kMaxTopK) << s.top_k();
  if (s.has_min_p()) PDS_CHECK(s.min_p() >= 0 && s.min_p() <= 1) << s.min_p();
  if (s.has_repetition_penalty()) {
    PDS_CHECK(std::isfinite(s.repetition_penalty()) && s.repetition_penalty() > 0);
  }
  if (s.has_presence_penalty()) PDS_CHECK(std::fabs(s.presence_penalty()) <= 2);
  if (s.has_frequency_penalty()) PDS_CHECK(std::fabs(s.frequency_penalty()) <= 2);
  PDS_CHECK(s.top_logprobs() >= 0 && s.top_logprobs() <= 20) << s.top_logprobs();
  if (req.stop().has_max_tokens()) PDS_CHECK(req.stop().max_tokens() >= 1);
  for (int32_t t : req.stop().stop_token_ids()) PDS_CHECK(t >= 0 && t < kVocab) << t;
  for (int32_t t : req.token_ids().ids()) PDS_CHECK(t >= 0 && t < kVocab) << t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const openai::Endpoint endpoint =
      (data[0] & 1) ? openai::Endpoint::kChat : openai::Endpoint::kCompletions;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  openai::ParseOptions options;
  options.model_names = {"smol", "SmolLM2 135M"};
  options.n_vocab = kVocab;
  openai::ParsedRequest parsed;
  if (std::optional<openai::ApiError> e = openai::ParseRequest(endpoint, body, options, &parsed)) {
    PDS_CHECK(e->http_status == 400 || e->http_status == 404) << e->http_status;
    PDS_CHECK(nlohmann::json::accept(openai::ErrorBody(*e)));
    return 0;
  }
  PDS_CHECK(parsed.endpoint == endpoint);
  CheckInRange(parsed.request);
  // Responses to it (no tokenizer: logprob tokens are spelled empty).
  openai::ResponseBuilder builder(parsed, "cmpl-1", 0, nullptr);
  pdserve::v1::Chunk chunk;
  chunk.set_text("hi \xff");  // invalid UTF-8 from a model must not break JSON
  chunk.add_token_ids(7);
  chunk.add_logprobs(-0.5f);
  for (const std::string& s : builder.StreamChunk(chunk)) {
    PDS_CHECK(nlohmann::json::accept(s)) << s;
  }
  builder.Accumulate(chunk);
  pdserve::v1::Complete complete;
  complete.set_finish_reason(pdserve::v1::FINISH_REASON_STOP);
  for (const std::string& s : builder.StreamComplete(complete)) {
    PDS_CHECK(nlohmann::json::accept(s)) << s;
  }
  PDS_CHECK(nlohmann::json::accept(builder.FinalBody(complete)));
  return 0;
}
