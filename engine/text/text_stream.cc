#include "engine/text/text_stream.h"

#include <algorithm>

namespace pdserve {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings)
    : detok_(tokenizer), stops_(std::move(stop_strings)) {}

TextStream::Delta TextStream::Push(TokenId token) {
  Delta d;
  if (stopped_) {
    d.stopped = true;
    return d;
  }
  held_ += detok_.Push(token);
  if (stops_.empty()) {
    d.text.swap(held_);
    return d;
  }
  // Earliest complete stop string: emit what precedes it, drop the rest.
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    d.text = held_.substr(0, first);
    d.stopped = stopped_ = true;
    held_.clear();
    return d;
  }
  // Hold back the longest suffix that could still grow into a stop string.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  // Never cut inside a UTF-8 character: held_ holds whole characters, and a
  // stop string prefix that matches a suffix starts on a character boundary
  // because the stop string itself is valid UTF-8.
  d.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return d;
}

std::string TextStream::Flush() {
  if (stopped_) return {};
  std::string out = std::move(held_);
  held_.clear();
  out += detok_.Flush();
  return out;
}

}  // namespace pdserve
