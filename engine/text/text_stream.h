// Turns a sequence's sampled tokens into the text a client sees: decodes
// incrementally without splitting UTF-8 characters, holds back text that
// could be the start of a stop string, and detects stop strings, which are
// not emitted.
#pragma once

#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace pdserve {

class TextStream {
 public:
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings);

  struct Delta {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string matched; nothing after it is emitted
  };
  Delta Push(TokenId token);
  // End of generation for another reason: whatever is still held back.
  std::string Flush();

 private:
  StreamingDetokenizer detok_;
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace pdserve
