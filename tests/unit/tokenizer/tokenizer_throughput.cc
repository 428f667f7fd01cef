// Prints Encode throughput on a text: not a test (tests never time), a tool.
//   build/bin/tokenizer_throughput MODEL.gguf [TEXT_FILE...]
// The text files are concatenated and cut at 100 KiB; without files, the
// English licence texts under /usr/share/common-licenses are used.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"

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
  // Wall time, and this thread's CPU time (steadier on a busy machine).
  auto thread_cpu_seconds = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  };
  size_t n_tokens = 0;
  std::vector<double> wall_mb_s, cpu_mb_s;
  for (int i = 0; i < 30; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = thread_cpu_seconds();
    auto ids = (*tok)->Encode(text);
    const double cpu = thread_cpu_seconds() - cpu_start;
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!ids.ok()) return 1;
    n_tokens = ids->size();
    wall_mb_s.push_back(text.size() / 1e6 / wall);
    cpu_mb_s.push_back(text.size() / 1e6 / cpu);
  }
  std::sort(wall_mb_s.begin(), wall_mb_s.end());
  std::sort(cpu_mb_s.begin(), cpu_mb_s.end());
  std::printf(
      "%s (pre %s): %zu bytes -> %zu tokens; encode median %.1f MB/s wall (max %.1f), "
      "%.1f MB/s of CPU time (max %.1f)\n",
      argv[1], std::string((*tok)->pre()).c_str(), text.size(), n_tokens,
      wall_mb_s[wall_mb_s.size() / 2], wall_mb_s.back(), cpu_mb_s[cpu_mb_s.size() / 2],
      cpu_mb_s.back());
  return 0;
}
