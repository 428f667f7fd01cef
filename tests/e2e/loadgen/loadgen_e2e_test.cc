// `pdserve loadgen` against a real local cluster (`pdserve cluster`, one
// prefill and one decode node, one thread each, the router's HTTP front on):
// a short bounded load over gRPC and over HTTP, then the result files.
#include <chrono>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/loadgen/process.h"

namespace pdserve::testing {
namespace {

constexpr int kStartupGuardS = 300;  // loading the model on a busy machine
constexpr int kRunGuardS = 600;      // loadgen's own --max-duration is 300
// Ports the cluster takes relative to its router port: nodes, decode KV,
// the HTTP front.
const std::vector<int> kPortOffsets = {0, 1, 2, 100, 50};

class LoadgenE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(PDSERVE_MODEL_PATH)) return;
    port_ = FreePortBlock(kPortOffsets);
    ASSERT_NE(port_, 0) << "no free ports";
    log_ = TempPath("cluster.log");
    cluster_ = Spawn({PDSERVE_BIN, "cluster", "--model", PDSERVE_MODEL_PATH, "--prefill", "1",
                      "--decode", "1", "--threads", "1", "--port", std::to_string(port_),
                      "--http-port", std::to_string(port_ + 50), "--log-level", "warning"},
                     log_);
    ASSERT_GT(cluster_, 0) << "cannot start pdserve cluster";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kStartupGuardS);
    while (ReadFile(log_).find("cluster ready") == std::string::npos) {
      ASSERT_TRUE(Alive(cluster_)) << "cluster exited during startup:\n" << ReadFile(log_);
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "cluster not ready:\n"
                                                            << ReadFile(log_);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  static void TearDownTestSuite() {
    if (cluster_ > 0) Stop(cluster_, 30);
    cluster_ = -1;
    if (!log_.empty()) std::filesystem::remove(log_);
  }
  void SetUp() override {
    if (!std::filesystem::exists(PDSERVE_MODEL_PATH)) {
      GTEST_SKIP() << "model missing: run scripts/fetch_model.sh";
    }
    ASSERT_GT(cluster_, 0);
    ASSERT_TRUE(Alive(cluster_)) << "cluster died:\n" << ReadFile(log_);
    dir_ = TempPath("out");
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // 8 prompts of 32 tokens, 8 output tokens each, all at once; SLOs loose
  // enough that every request meets them on any machine.
  nlohmann::json RunLoad(const std::string& target) {
    const RunResult r = testing::Run({PDSERVE_BIN,
                                      "loadgen",
                                      "--target",
                                      target,
                                      "--num-prompts",
                                      "8",
                                      "--random-input-len",
                                      "32",
                                      "--random-output-len",
                                      "8",
                                      "--ignore-eos",
                                      "--max-duration",
                                      "300",
                                      "--goodput",
                                      "ttft:600000",
                                      "tpot:600000",
                                      "--result-json",
                                      dir_ + "/result.json",
                                      "--detailed-csv",
                                      dir_ + "/requests.csv",
                                      "--plot-dir",
                                      dir_ + "/plots",
                                      "--no-progress"},
                                     kRunGuardS);
    EXPECT_EQ(r.exit_code, 0) << r.err << "\n" << r.out << "\ncluster log:\n" << ReadFile(log_);
    EXPECT_NE(r.out.find("loadgen result"), std::string::npos) << r.out;
    const std::string text = ReadFile(dir_ + "/result.json");
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    EXPECT_TRUE(j.is_object()) << text;
    return j;
  }

  // What both transports must show for the load above.
  void CheckCommon(const nlohmann::json& j, const std::string& backend) {
    ASSERT_TRUE(j.is_object());
    const nlohmann::json& meta = j["metadata"];
    EXPECT_EQ(meta["backend"], backend);
    EXPECT_FALSE(meta["model"].get<std::string>().empty());
    EXPECT_GE(meta["machine"]["cores"].get<int>(), 1);
    EXPECT_FALSE(meta["machine"]["date"].get<std::string>().empty());
    EXPECT_EQ(meta["arguments"]["num-prompts"], 8);

    ASSERT_EQ(j["runs"].size(), 1u);
    const nlohmann::json& run = j["runs"][0];
    EXPECT_EQ(run["num_prompts"], 8);
    EXPECT_EQ(run["completed"], 8) << run.dump(2);
    EXPECT_EQ(run["failed"], 0);
    EXPECT_EQ(run["cancelled"], 0);
    EXPECT_EQ(run["not_sent"], 0);
    // --ignore-eos: every request runs to max_tokens; usage reports the
    // input, which the workload sized at 32 tokens per prompt.
    EXPECT_EQ(run["total_output_tokens"], 64);
    EXPECT_EQ(run["input_tokens_from_usage"], 8);
    EXPECT_EQ(run["total_input_tokens"], 256);
    for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
      const nlohmann::json& d = run[metric];
      for (const char* p : {"mean", "p50", "p90", "p99"}) {
        ASSERT_TRUE(d[p].is_number()) << metric << " " << p << ": " << d.dump();
      }
      EXPECT_GT(d["p50"].get<double>(), 0.0) << metric;
      EXPECT_LE(d["p50"].get<double>(), d["p90"].get<double>()) << metric;
      EXPECT_LE(d["p90"].get<double>(), d["p99"].get<double>()) << metric;
    }
    EXPECT_EQ(run["ttft_ms"]["count"], 8);
    // A chunk may carry several tokens, so at most one gap per later token.
    EXPECT_GT(run["itl_ms"]["count"].get<int>(), 0);
    EXPECT_LE(run["itl_ms"]["count"].get<int>(), 8 * 7);
    EXPECT_LE(run["ttft_ms"]["p99"].get<double>(), run["e2e_ms"]["p99"].get<double>());
    const double throughput = run["request_throughput"].get<double>();
    EXPECT_GT(throughput, 0.0);
    ASSERT_TRUE(run["goodput"].is_number());
    EXPECT_LE(run["goodput"].get<double>(), throughput);
    EXPECT_EQ(run["good_requests"], 8);

    const std::string csv = ReadFile(dir_ + "/requests.csv");
    const std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
    ASSERT_EQ(lines.size(), 9u) << csv;
    for (size_t i = 1; i < lines.size(); ++i) {
      EXPECT_NE(lines[i].find(",32,8,true,ok,"), std::string::npos) << lines[i];
    }
    for (const char* svg : {"ttft_cdf.svg", "tpot_cdf.svg", "e2e_cdf.svg"}) {
      const std::string text = ReadFile(dir_ + "/plots/" + svg);
      EXPECT_NE(text.find("<polyline"), std::string::npos) << svg;
      EXPECT_NE(text.find("</svg>"), std::string::npos) << svg;
    }
  }

  static inline int port_ = 0;
  static inline pid_t cluster_ = -1;
  static inline std::string log_;
  std::string dir_;
};

TEST_F(LoadgenE2eTest, GrpcTargetReportsLatenciesGoodputAndStages) {
  const nlohmann::json j = RunLoad(absl::StrCat("grpc://127.0.0.1:", port_));
  CheckCommon(j, "grpc");
  if (HasFatalFailure()) return;
  EXPECT_EQ(j["metadata"]["model_info"]["vocab_size"], 49152);
  // The router's per-stage timings: each present stage has p50 <= p99.
  const nlohmann::json& stages = j["runs"][0]["stages_ms"];
  for (const char* stage : {"router.queue", "prefill.compute", "decode.generate"}) {
    ASSERT_TRUE(stages.contains(stage)) << stages.dump(2);
    EXPECT_EQ(stages[stage]["count"], 8) << stage;
    EXPECT_LE(stages[stage]["p50"].get<double>(), stages[stage]["p99"].get<double>()) << stage;
  }
}

TEST_F(LoadgenE2eTest, HttpTargetOnTheRoutersOpenAiFront) {
  const nlohmann::json j = RunLoad(absl::StrCat("http://127.0.0.1:", port_ + 50));
  CheckCommon(j, "http");
  if (HasFatalFailure()) return;
  EXPECT_TRUE(j["runs"][0]["stages_ms"].empty());  // HTTP carries no stage timings
}

}  // namespace
}  // namespace pdserve::testing
