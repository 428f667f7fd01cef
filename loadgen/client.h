// The seam between the load generator and a serving endpoint: one narrow,
// asynchronous interface with a gRPC (pdserve) and an HTTP (OpenAI SSE)
// implementation, and fakes in the tests.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pdserve::loadgen {

// One prompt to send. Exactly one of `text` / `token_ids` is used: token ids
// where the target takes them (pdserve gRPC), text otherwise.
struct RequestInput {
  std::string id;
  std::string text;
  std::vector<int32_t> token_ids;
  int32_t input_tokens = 0;  // as the workload planned it (usage may differ)
  int32_t max_tokens = 16;
  bool ignore_eos = false;
  float temperature = 0.0f;
};

// A stage as a pdserve router reported it in `complete.timings`.
struct StageDuration {
  std::string stage;
  int64_t duration_ns = 0;
};

// What happened to one request, on the load generator's monotonic clock.
struct RequestOutcome {
  int64_t send_ns = 0;  // when the request was handed to the transport
  int64_t end_ns = 0;   // when the stream ended (any way)
  // Arrival time of each chunk that carried output (the first one is TTFT).
  std::vector<int64_t> chunk_ns;
  int32_t output_tokens = 0;  // from usage when the target gave it, else chunks
  bool output_tokens_from_usage = false;
  int32_t input_tokens = -1;                  // from usage; -1 when the target did not say
  int32_t cached_input_tokens = 0;            // served from a prefix cache, when reported
  bool cached_input_tokens_reported = false;  // else 0 above means "not reported"
  bool success = false;
  bool cancelled = false;  // cut off by the load generator (time bound)
  std::string error;       // empty on success
  std::vector<StageDuration> stages;
};

// What the target says it serves.
struct ModelDescription {
  std::string name;
  int32_t vocab_size = 0;      // 0 when unknown (HTTP targets)
  int32_t context_length = 0;  // 0 when unknown
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;
};

using DoneCallback = std::function<void(RequestOutcome)>;

class LoadClient {
 public:
  virtual ~LoadClient() = default;
  // "grpc" or "http".
  virtual std::string kind() const = 0;
  // Whether prompts may be token ids (else they must be text).
  virtual bool accepts_token_ids() const = 0;
  // Blocking; for the metadata and the workload (vocabulary size).
  virtual absl::StatusOr<ModelDescription> GetModelInfo(absl::Duration timeout) = 0;
  // Starts one request and returns at once. `done` runs exactly once, on a
  // transport thread; it must not call back into the client.
  virtual void Send(const RequestInput& input, DoneCallback done) = 0;
  // Cuts every request in flight; each finishes with cancelled = true.
  virtual void CancelAll() = 0;
};

}  // namespace pdserve::loadgen
