// CPU processes never map a CUDA library: the CUDA backend and the GPU KV
// transports live in libpdserve_cuda.so, loaded only at --device cuda
// (common/dynamic_module.h). Checked on live processes, after start-up:
// a router and a CPU node, each process's /proc/PID/maps.
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster_harness.h"

namespace pdserve {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The CUDA libraries a mapping line can name.
std::vector<std::string> CudaMappings(const std::string& maps) {
  std::vector<std::string> found;
  std::istringstream lines(maps);
  for (std::string line; std::getline(lines, line);) {
    for (const char* lib : {"libcuda", "libcudart", "libcublas", "libnccl"}) {
      if (absl::StrContains(line, lib)) {
        found.push_back(line);
        break;
      }
    }
  }
  return found;
}

// Starts `args` and waits (up to 60 s) until its log says `ready`; then
// returns its /proc/PID/maps.
std::string MapsOnceReady(const std::string& name, const std::vector<std::string>& args,
                          const std::string& ready) {
  const std::string log = absl::StrCat(::testing::TempDir(), "/cuda_free_", name, ".log");
  auto child = itest::ChildProcess::Start(name, args, log);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return "";
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!absl::StrContains((*child)->LogTail(), ready)) {
    if (!(*child)->Running() || absl::Now() > deadline) {
      ADD_FAILURE() << name << " did not start: " << (*child)->LogTail();
      return "";
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  std::string maps = ReadFile(absl::StrCat("/proc/", (*child)->pid(), "/maps"));
  (*child)->Stop(absl::Seconds(10));
  return maps;
}

// The router needs only a vocabulary: the real model when present, else a
// vocabulary-only GGUF from the test data.
std::string VocabPath() {
  if (itest::HaveModel()) return itest::ModelPath();
  return std::string(PDSERVE_TESTDATA_DIR) + "/tokenizer/ggml-vocab-llama-spm.gguf";
}

TEST(CudaFreeTest, RouterMapsNoCudaLibrary) {
  const std::string maps = MapsOnceReady(
      "router",
      {itest::PdserveBinary(), "router", "--model", VocabPath(), "--listen", "127.0.0.1:0"},
      "router listening on port");
  ASSERT_TRUE(absl::StrContains(maps, "libc.so")) << maps;  // a live process's maps
  EXPECT_EQ(CudaMappings(maps), std::vector<std::string>{});
}

TEST(CudaFreeTest, CpuNodeMapsNoCudaLibrary) {
  const std::string maps =
      MapsOnceReady("mixed_cpu",
                    {itest::PdserveBinary(), "mixed", "--device", "cpu", "--load-format", "dummy",
                     "--dummy-config", "tiny", "--threads", "1", "--listen", "127.0.0.1:0"},
                    "listening on port");
  ASSERT_TRUE(absl::StrContains(maps, "libc.so")) << maps;
  EXPECT_EQ(CudaMappings(maps), std::vector<std::string>{});
}

}  // namespace
}  // namespace pdserve
