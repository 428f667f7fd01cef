// Server-sent events as OpenAI-compatible servers stream them, and the
// payloads of /v1/completions (and chat) stream chunks.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::loadgen {

// Incremental SSE parser (WHATWG "event stream" rules): lines end in LF, CR
// or CRLF, even split across Feed calls; `data:` lines of one event are
// joined with '\n'; a blank line dispatches; comments (':') and other fields
// are dropped. A stream that ends without the blank line loses its last
// event, as the spec says.
class SseParser {
 public:
  struct Event {
    std::string event;  // the `event:` field, usually empty
    std::string data;
  };
  // Appends the events completed by `bytes` to `out`.
  void Feed(std::string_view bytes, std::vector<Event>* out);

 private:
  void Line(std::string_view line, std::vector<Event>* out);

  std::string line_;
  bool last_was_cr_ = false;
  std::string event_;
  std::string data_;
  bool have_data_ = false;
};

// One `data:` payload of a streamed completion.
struct CompletionEvent {
  bool done = false;        // the "[DONE]" sentinel
  bool has_choice = false;  // carried a choice (a token chunk)
  std::string text;         // choices[0].text or choices[0].delta.content
  std::string finish_reason;
  std::optional<int> prompt_tokens;      // from usage, when present
  std::optional<int> completion_tokens;  // from usage, when present
  std::optional<int> cached_tokens;      // usage.prompt_tokens_details.cached_tokens
  std::string error;                     // an {"error": ...} payload, as text
};

// InvalidArgument when the payload is neither [DONE] nor a JSON object.
absl::StatusOr<CompletionEvent> ParseCompletionEvent(std::string_view data);

}  // namespace pdserve::loadgen
