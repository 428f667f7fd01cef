#include "loadgen/sse.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pdserve::loadgen {

void SseParser::Feed(std::string_view bytes, std::vector<Event>* out) {
  for (char c : bytes) {
    if (c == '\n' && last_was_cr_) {  // the LF of a CRLF
      last_was_cr_ = false;
      continue;
    }
    last_was_cr_ = (c == '\r');
    if (c == '\n' || c == '\r') {
      Line(line_, out);
      line_.clear();
    } else {
      line_.push_back(c);
    }
  }
}

void SseParser::Line(std::string_view line, std::vector<Event>* out) {
  if (line.empty()) {
    if (have_data_) out->push_back({std::move(event_), std::move(data_)});
    event_.clear();
    data_.clear();
    have_data_ = false;
    return;
  }
  if (line[0] == ':') return;
  const size_t colon = line.find(':');
  std::string_view field = line.substr(0, colon);
  std::string_view value = colon == std::string_view::npos ? "" : line.substr(colon + 1);
  if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
  if (field == "data") {
    if (have_data_) data_.push_back('\n');
    data_.append(value);
    have_data_ = true;
  } else if (field == "event") {
    event_ = std::string(value);
  }
}

absl::StatusOr<CompletionEvent> ParseCompletionEvent(std::string_view data) {
  CompletionEvent ev;
  const absl::string_view stripped =
      absl::StripAsciiWhitespace(absl::string_view(data.data(), data.size()));
  const std::string_view trimmed(stripped.data(), stripped.size());
  if (trimmed == "[DONE]") {
    ev.done = true;
    return ev;
  }
  nlohmann::json j = nlohmann::json::parse(trimmed, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("stream event is not a JSON object: ", std::string(trimmed.substr(0, 120))));
  }
  if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
    if (e->is_object() && e->contains("message") && (*e)["message"].is_string()) {
      ev.error = (*e)["message"].get<std::string>();
    } else {
      ev.error = e->dump();
    }
    return ev;
  }
  if (auto c = j.find("choices"); c != j.end() && c->is_array() && !c->empty()) {
    const nlohmann::json& choice = (*c)[0];
    ev.has_choice = true;
    if (auto t = choice.find("text"); t != choice.end() && t->is_string()) {
      ev.text = t->get<std::string>();
    } else if (auto d = choice.find("delta"); d != choice.end() && d->is_object()) {
      if (auto t2 = d->find("content"); t2 != d->end() && t2->is_string()) {
        ev.text = t2->get<std::string>();
      }
    }
    if (auto f = choice.find("finish_reason"); f != choice.end() && f->is_string()) {
      ev.finish_reason = f->get<std::string>();
    }
  }
  if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
    if (auto p = u->find("prompt_tokens"); p != u->end() && p->is_number_integer()) {
      ev.prompt_tokens = p->get<int>();
    }
    if (auto p = u->find("completion_tokens"); p != u->end() && p->is_number_integer()) {
      ev.completion_tokens = p->get<int>();
    }
    if (auto d = u->find("prompt_tokens_details"); d != u->end() && d->is_object()) {
      if (auto p = d->find("cached_tokens"); p != d->end() && p->is_number_integer()) {
        ev.cached_tokens = p->get<int>();
      }
    }
  }
  return ev;
}

}  // namespace pdserve::loadgen
