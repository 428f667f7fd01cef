// Prints Encode throughput on a text: not a test (tests never time), a tool.
//   build/bin/tokenizer_throughput MODEL.gguf [TEXT_FILE...]
// The text files are concatenated and cut at 100 KiB; without files, the
// English licence texts under /usr/share/common-licenses are used.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [TEXT_FILE...]\n", argv[0]);
    return 2;
  }
  std::vector<std::string> files(argv + 2, argv + argc);
  if (files.empty()) {
    for (const char* name : {"GPL-3", "GFDL-1.3", "LGPL-2.1", "MPL-2.0", "Apache-2.0"}) {
      files.push_back(std::string("/usr/share/common-licenses/") + name);
    }
  }
  constexpr size_t kTextBytes = 100 << 10;
  std::string text;
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str();
  }
  if (text.size() < kTextBytes) {
    std::fprintf(stderr, "only %zu bytes of text; need %zu\n", text.size(), kTextBytes);
    return 1;
  }
  text.resize(kTextBytes);
  while (!text.empty() && (static_cast<unsigned char>(text.back()) & 0xC0) == 0x80) text.pop_back();

  auto file = pdserve::gguf::GgufFile::Open(argv[1]);
  if (!file.ok()) {
    std::fprintf(stderr, "%s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  auto tok = pdserve::Tokenizer::FromGguf(**file);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  size_t n_tokens = 0;
  std::vector<double> mb_per_s;
  for (int i = 0; i < 20; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto ids = (*tok)->Encode(text);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!ids.ok()) return 1;
    n_tokens = ids->size();
    mb_per_s.push_back(text.size() / 1e6 / s);
  }
  std::sort(mb_per_s.begin(), mb_per_s.end());
  std::printf(
      "%s (pre %s): %zu bytes -> %zu tokens; encode median %.1f MB/s (min %.1f, max %.1f)\n",
      argv[1], std::string((*tok)->pre()).c_str(), text.size(), n_tokens,
      mb_per_s[mb_per_s.size() / 2], mb_per_s.front(), mb_per_s.back());
  return 0;
}
