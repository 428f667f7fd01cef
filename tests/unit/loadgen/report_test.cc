#include "loadgen/report.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "loadgen/compare.h"
#include "loadgen/http_client.h"
#include "loadgen/plots.h"

namespace pdserve::loadgen {
namespace {

RunReport MakeRun(double rate, double ttft_base_ms) {
  RunReport run;
  for (int i = 0; i < 5; ++i) {
    RequestInput in;
    in.id = "id,\"" + std::to_string(i) + "\"";  // needs CSV quoting
    in.input_tokens = 16;
    in.max_tokens = 4;
    RequestOutcome o;
    o.send_ns = 0;
    const int64_t t = static_cast<int64_t>((ttft_base_ms + i) * 1e6);
    o.chunk_ns = {t, t + 1000000, t + 2000000, t + 3000000};
    o.end_ns = t + 3000000;
    o.output_tokens = 4;
    o.success = i != 4;
    if (i == 4) o.error = "server said \"no\"";
    run.records.push_back(MakeRecord(i, in, o, 0));
  }
  run.records.push_back(NotSentRecord(5, RequestInput{}));
  Slo slo;
  slo.ttft_ms = ttft_base_ms + 1.5;
  run.summary = Summarize({rate, 1.0, 0}, run.records, 2.0, {50, 90, 99}, slo);
  return run;
}

TEST(ResultJsonTest, CarriesCountsPercentilesGoodputAndRate) {
  Slo slo;
  slo.ttft_ms = 11.5;
  const std::vector<RunReport> runs = {MakeRun(2.0, 10),
                                       MakeRun(std::numeric_limits<double>::infinity(), 10)};
  const nlohmann::ordered_json j = ResultJson({{"target", "grpc://x:1"}}, {50, 90, 99}, slo, runs);
  ASSERT_EQ(j["runs"].size(), 2u);
  const auto& r = j["runs"][0];
  EXPECT_EQ(r["request_rate"], 2.0);
  EXPECT_EQ(j["runs"][1]["request_rate"], "inf");
  EXPECT_EQ(r["completed"], 4);
  EXPECT_EQ(r["failed"], 1);
  EXPECT_EQ(r["not_sent"], 1);
  EXPECT_EQ(r["good_requests"], 2);
  EXPECT_DOUBLE_EQ(r["goodput"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(r["request_throughput"].get<double>(), 2.0);
  for (const char* m : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    ASSERT_TRUE(r[m].contains("p50")) << m;
    EXPECT_LE(r[m]["p50"].get<double>(), r[m]["p90"].get<double>()) << m;
    EXPECT_LE(r[m]["p90"].get<double>(), r[m]["p99"].get<double>()) << m;
  }
  EXPECT_EQ(j["slo"]["ttft_ms"], 11.5);
  EXPECT_EQ(j["sweep"]["max_rate_at_90pct_slo_attainment"], nullptr);  // 2 of 6 meet
  EXPECT_EQ(j["metadata"]["target"], "grpc://x:1");
  // NaN never reaches the file: JSON has no NaN.
  const nlohmann::ordered_json empty = RunToJson(Summarize({}, {}, 0.0, {50}, Slo{}));
  EXPECT_TRUE(empty["ttft_ms"]["p50"].is_null());
  EXPECT_TRUE(empty["goodput"].is_null());
}

TEST(DetailedCsvTest, OneQuotedRowPerRequest) {
  const std::string csv = DetailedCsv({MakeRun(2.0, 10)});
  const std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 7u);  // header + 6 prompts
  EXPECT_EQ(lines[0],
            "run,request_rate,id,start_offset_s,ttft_ms,tpot_ms,e2e_ms,input_tokens,output_tokens,"
            "success,status,error");
  EXPECT_EQ(lines[1], "0,2,\"id,\"\"0\"\"\",0.000,10.000,1.000,13.000,16,4,true,ok,");
  EXPECT_NE(lines[5].find(",false,failed,\"server said \"\"no\"\"\""), std::string::npos)
      << lines[5];
  EXPECT_NE(lines[6].find("not_sent"), std::string::npos);
}

TEST(PlotsTest, WritesCdfsAndSweepFigures) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("loadgen_plots_" + std::to_string(::getpid())))
          .string();
  auto one = WritePlots(dir, {MakeRun(1.0, 10)}, "t");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->size(), 4u);  // ttft, tpot, e2e, itl CDFs
  auto sweep = WritePlots(dir, {MakeRun(1.0, 10), MakeRun(2.0, 20)}, "t");
  ASSERT_TRUE(sweep.ok());
  EXPECT_EQ(sweep->size(), 9u);
  for (const std::string& f : *sweep) EXPECT_GT(std::filesystem::file_size(f), 200u) << f;
  EXPECT_TRUE(std::filesystem::exists(dir + "/throughput_vs_rate.svg"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/tpot_vs_rate.svg"));
  std::filesystem::remove_all(dir);
}

TEST(HttpRequestBodyTest, AsksForStreamingWithUsage) {
  RequestInput in;
  in.text = "hello";
  in.max_tokens = 8;
  const nlohmann::json b = nlohmann::json::parse(HttpClient::RequestBody("m", in));
  EXPECT_EQ(b["stream"], true);
  EXPECT_EQ(b["stream_options"]["include_usage"], true);
  EXPECT_EQ(b["max_tokens"], 8);
  EXPECT_FALSE(b.contains("ignore_eos"));
  EXPECT_EQ(b["prompt"], "hello");
  EXPECT_FALSE(b.contains("messages"));
}

TEST(HttpRequestBodyTest, ChatEndpointSendsTheTextAsOneUserMessage) {
  EXPECT_TRUE(HttpClient::IsChatPath("/v1/chat/completions"));
  EXPECT_FALSE(HttpClient::IsChatPath("/v1/completions"));
  RequestInput in;
  in.text = "hello";
  in.max_tokens = 8;
  const nlohmann::json b = nlohmann::json::parse(HttpClient::RequestBody("m", in, /*chat=*/true));
  EXPECT_FALSE(b.contains("prompt"));
  ASSERT_EQ(b["messages"].size(), 1u);
  EXPECT_EQ(b["messages"][0]["role"], "user");
  EXPECT_EQ(b["messages"][0]["content"], "hello");
  EXPECT_EQ(b["stream"], true);
}

}  // namespace
}  // namespace pdserve::loadgen

namespace pdserve::loadgen {
namespace {

TEST(CompareTest, ReadsResultFilesBackAndPlotsThem) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("loadgen_compare_" + std::to_string(::getpid())))
          .string();
  std::filesystem::create_directories(dir);
  Slo slo;
  slo.ttft_ms = 11.5;
  nlohmann::ordered_json meta;
  meta["label"] = "disaggregated";
  const std::vector<RunReport> runs = {MakeRun(2.0, 10),
                                       MakeRun(std::numeric_limits<double>::infinity(), 10)};
  ASSERT_TRUE(WriteFile(dir + "/a.json", ResultJson(meta, {50, 99}, slo, runs).dump()).ok());
  std::vector<RunReport> no_slo = runs;
  for (RunReport& r : no_slo) {
    r.summary = Summarize(r.summary.config, r.records, 2.0, {50, 99}, Slo{});
  }
  ASSERT_TRUE(WriteFile(dir + "/b.json", ResultJson({}, {50, 99}, Slo{}, no_slo).dump()).ok());

  auto a = LoadResult(dir + "/a.json");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->label, "disaggregated");
  ASSERT_EQ(a->runs.size(), 2u);
  EXPECT_EQ(a->runs[0].rate, 2.0);
  EXPECT_TRUE(std::isinf(a->runs[1].rate));
  EXPECT_DOUBLE_EQ(a->runs[0].goodput, 1.0);
  EXPECT_DOUBLE_EQ(a->runs[0].request_throughput, 2.0);
  EXPECT_DOUBLE_EQ(a->runs[0].ttft_p50_ms, runs[0].summary.ttft_ms.At(50));
  auto b = LoadResult(dir + "/b.json");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->label, "b");  // no label: the file name
  EXPECT_TRUE(std::isnan(b->runs[0].goodput));

  auto files = WriteComparisonPlots(dir + "/plots", {*a, *b});
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->size(), 4u);  // goodput, throughput, p99 TTFT, p99 TPOT
  EXPECT_FALSE(LoadResult(dir + "/missing.json").ok());
  ASSERT_TRUE(WriteFile(dir + "/c.json", "{\"no\": 1}").ok());
  EXPECT_FALSE(LoadResult(dir + "/c.json").ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace pdserve::loadgen
