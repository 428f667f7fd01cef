// `pdserve loadgen` rejects bad flags and unreachable targets with one clear
// error line and a non-zero exit, before sending any load.
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/e2e/loadgen/process.h"

namespace pdserve::testing {
namespace {

constexpr int kGuardS = 120;

RunResult Loadgen(std::vector<std::string> flags) {
  std::vector<std::string> args = {PDSERVE_BIN, "loadgen"};
  args.insert(args.end(), flags.begin(), flags.end());
  return Run(args, kGuardS);
}

// Exits non-zero with exactly one stderr line naming the problem.
void ExpectOneErrorLine(const RunResult& r, const std::string& mentions) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, -1) << "killed by the hang guard";
  const std::vector<std::string> lines = absl::StrSplit(r.err, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_TRUE(absl::StartsWith(lines[0], "pdserve loadgen: error: ")) << lines[0];
  EXPECT_NE(lines[0].find(mentions), std::string::npos) << lines[0];
  EXPECT_EQ(r.out, "");
}

TEST(LoadgenCliTest, BadFlagsGetOneClearError) {
  const std::string t = "--target=grpc://127.0.0.1:1";
  ExpectOneErrorLine(Loadgen({}), "--target is required");
  ExpectOneErrorLine(Loadgen({"--target", "127.0.0.1:50051"}), "expected grpc://HOST:PORT");
  ExpectOneErrorLine(Loadgen({"--target", "http://host:70000"}), "bad port");
  ExpectOneErrorLine(Loadgen({t, "--request-rate", "0"}), "--request-rate");
  ExpectOneErrorLine(Loadgen({t, "--request-rate", "fast"}), "--request-rate");
  ExpectOneErrorLine(Loadgen({t, "--sweep", "1,x"}), "--sweep");
  ExpectOneErrorLine(Loadgen({t, "--sweep", "1,2", "--request-rate", "3"}), "not both");
  ExpectOneErrorLine(Loadgen({t, "--burstiness", "0"}), "--burstiness");
  ExpectOneErrorLine(Loadgen({t, "--percentiles", "50,150"}), "--percentiles");
  ExpectOneErrorLine(Loadgen({t, "--goodput", "ttft"}), "--goodput");
  ExpectOneErrorLine(Loadgen({t, "--goodput", "latency:5"}), "unknown SLO");
  ExpectOneErrorLine(Loadgen({t, "--max-duration", "0"}), "--max-duration");
  ExpectOneErrorLine(Loadgen({t, "--warmup-window", "-1"}), "--warmup-window");
  ExpectOneErrorLine(Loadgen({t, "--cooldown-window", "nan"}), "--cooldown-window");
  ExpectOneErrorLine(Loadgen({t, "--max-concurrency", "-1"}), "--max-concurrency");
  ExpectOneErrorLine(Loadgen({t, "--num-prompts", "0"}), "--num-prompts");
  ExpectOneErrorLine(Loadgen({t, "--random-range-ratio", "1"}), "--random-range-ratio");
  ExpectOneErrorLine(Loadgen({t, "--dataset-name", "sharegpt"}), "--dataset-path");
  ExpectOneErrorLine(Loadgen({t, "--dataset-name", "lmsys"}), "--dataset-name");
  ExpectOneErrorLine(Loadgen({t, "--prefix-len", "-3"}), "--prefix-len");
}

TEST(LoadgenCliTest, UnreachableTargetsFailFast) {
  const int port = FreePortBlock({0});
  ASSERT_NE(port, 0);
  ExpectOneErrorLine(Loadgen({"--target", absl::StrCat("grpc://127.0.0.1:", port)}),
                     "target not reachable");
  ExpectOneErrorLine(Loadgen({"--target", absl::StrCat("http://127.0.0.1:", port)}),
                     "target not reachable");
}

TEST(LoadgenCliTest, MissingDatasetFileIsAnError) {
  ExpectOneErrorLine(
      Loadgen({"--target=grpc://127.0.0.1:1", "--dataset-path", "/nonexistent/sharegpt.json"}),
      "/nonexistent/sharegpt.json");
}

}  // namespace
}  // namespace pdserve::testing
