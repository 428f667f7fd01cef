#include "tracing/span.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/cleanup/cleanup.h"
#include "tracing/otlp_file_exporter.h"

namespace pdserve::tracing {
namespace {

using Json = nlohmann::json;

// A scratch directory removed after the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "pdserve_span_XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const char* name) const {
    return (std::filesystem::path(path_) / name).string();
  }

 private:
  std::string path_;
};

std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

Span MakeSpan(const std::string& name) {
  Span span;
  span.trace_id = *TraceId::FromHex("4bf92f3577b34da6a3ce929d0e0e4736");
  span.span_id = SpanId::Random();
  span.name = name;
  span.start_unix_ns = 1'700'000'000'000'000'000;
  span.end_unix_ns = 1'700'000'000'250'000'000;
  return span;
}

// The attribute `key` of an OTLP attribute list, or null.
Json Attribute(const Json& attributes, const std::string& key) {
  for (const Json& attribute : attributes) {
    if (attribute["key"] == key) return attribute["value"];
  }
  return nullptr;
}

TEST(OtlpJsonTest, EncodesTheTracesDataStructure) {
  Span server = MakeSpan("router.generate");
  server.span_id = *SpanId::FromHex("00f067aa0ba902b7");
  server.parent_span_id = SpanId::FromHex("b7ad6b7169203331");
  server.kind = SpanKind::kServer;
  server.attributes = {{"pdserve.request_id", std::string("r-1")},
                       {"pdserve.prompt_tokens", int64_t{9007199254740993}},
                       {"pdserve.temperature", 0.7},
                       {"pdserve.stream", true}};
  Span failed = MakeSpan("decode.generate");
  failed.error = true;
  failed.status_message = "deadline exceeded";
  OtlpResource resource;
  resource.service_name = "pdserve-router";
  resource.attributes = {{"pdserve.role", std::string("router")}};

  const std::string line = EncodeOtlpJson({server, failed}, resource);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const Json json = Json::parse(line);
  ASSERT_EQ(json["resourceSpans"].size(), 1u);
  const Json& resource_spans = json["resourceSpans"][0];
  EXPECT_EQ(Attribute(resource_spans["resource"]["attributes"], "service.name"),
            Json({{"stringValue", "pdserve-router"}}));
  EXPECT_EQ(Attribute(resource_spans["resource"]["attributes"], "pdserve.role"),
            Json({{"stringValue", "router"}}));
  ASSERT_EQ(resource_spans["scopeSpans"].size(), 1u);
  EXPECT_EQ(resource_spans["scopeSpans"][0]["scope"]["name"], "pdserve");
  const Json& spans = resource_spans["scopeSpans"][0]["spans"];
  ASSERT_EQ(spans.size(), 2u);

  const Json& first = spans[0];
  EXPECT_EQ(first["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(first["spanId"], "00f067aa0ba902b7");
  EXPECT_EQ(first["parentSpanId"], "b7ad6b7169203331");
  EXPECT_EQ(first["name"], "router.generate");
  EXPECT_EQ(first["kind"], 2);
  // 64-bit integers travel as decimal strings (JSON numbers lose precision).
  EXPECT_EQ(first["startTimeUnixNano"], "1700000000000000000");
  EXPECT_EQ(first["endTimeUnixNano"], "1700000000250000000");
  EXPECT_EQ(Attribute(first["attributes"], "pdserve.request_id"), Json({{"stringValue", "r-1"}}));
  EXPECT_EQ(Attribute(first["attributes"], "pdserve.prompt_tokens"),
            Json({{"intValue", "9007199254740993"}}));
  EXPECT_EQ(Attribute(first["attributes"], "pdserve.temperature"), Json({{"doubleValue", 0.7}}));
  EXPECT_EQ(Attribute(first["attributes"], "pdserve.stream"), Json({{"boolValue", true}}));
  EXPECT_EQ(first["status"], Json::object());

  const Json& second = spans[1];
  EXPECT_FALSE(second.contains("parentSpanId"));
  EXPECT_EQ(second["kind"], 1);
  EXPECT_EQ(second["status"], Json({{"code", 2}, {"message", "deadline exceeded"}}));
}

TEST(OtlpJsonTest, StageSpansAreChildrenPlacedOnTheWallClock) {
  const SpanContext request = StartServerSpan(std::nullopt);
  StageTimeline timeline;
  timeline.Record(Stage::kRouterQueue, {0, 1'000});
  timeline.Record(Stage::kPrefillCompute, {5'000, 20'000});
  const int64_t origin = 1'700'000'000'000'000'000;
  const std::vector<Span> spans = StageSpans(request, timeline, origin);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[1].name, "prefill.compute");
  EXPECT_EQ(spans[1].trace_id, request.trace_id);
  EXPECT_EQ(spans[1].parent_span_id, request.span_id);
  EXPECT_EQ(spans[1].start_unix_ns, origin + 5'000);
  EXPECT_EQ(spans[1].end_unix_ns, origin + 25'000);
  EXPECT_NE(spans[0].span_id, spans[1].span_id);
}

TEST(OtlpFileExporterTest, WritesOneOtlpObjectPerLine) {
  TempDir dir;
  OtlpFileExporterOptions options;
  options.path = dir.File("spans.jsonl");
  options.max_spans_per_line = 2;
  auto exporter = OtlpFileExporter::Open(options);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  for (int i = 0; i < 5; ++i) EXPECT_TRUE((*exporter)->Export(MakeSpan("s" + std::to_string(i))));
  (*exporter)->Flush();
  EXPECT_EQ((*exporter)->written_spans(), 5u);
  EXPECT_EQ((*exporter)->dropped_spans(), 0u);

  std::vector<std::string> names;
  const std::regex hex32("[0-9a-f]{32}");
  const std::regex hex16("[0-9a-f]{16}");
  for (const std::string& line : ReadLines(options.path)) {
    const Json json = Json::parse(line);
    const Json& spans = json["resourceSpans"][0]["scopeSpans"][0]["spans"];
    EXPECT_LE(spans.size(), 2u);
    for (const Json& span : spans) {
      EXPECT_TRUE(std::regex_match(span["traceId"].get<std::string>(), hex32));
      EXPECT_TRUE(std::regex_match(span["spanId"].get<std::string>(), hex16));
      EXPECT_TRUE(span["startTimeUnixNano"].is_string());
      names.push_back(span["name"]);
    }
  }
  EXPECT_THAT(names, ::testing::ElementsAre("s0", "s1", "s2", "s3", "s4"));
}

TEST(OtlpFileExporterTest, DestructorWritesWhatIsQueued) {
  TempDir dir;
  OtlpFileExporterOptions options;
  options.path = dir.File("spans.jsonl");
  {
    auto exporter = OtlpFileExporter::Open(options);
    ASSERT_TRUE(exporter.ok());
    for (int i = 0; i < 100; ++i) (*exporter)->Export(MakeSpan("s"));
  }
  size_t n_spans = 0;
  for (const std::string& line : ReadLines(options.path)) {
    n_spans += Json::parse(line)["resourceSpans"][0]["scopeSpans"][0]["spans"].size();
  }
  EXPECT_EQ(n_spans, 100u);
}

TEST(OtlpFileExporterTest, FullQueueDropsAndCountsWithoutBlocking) {
  // The exporter writes into a pipe the test reads only when it chooses, so
  // the writer thread is stuck exactly while the test fills the queue.
  TempDir dir;
  const std::string fifo = dir.File("spans.fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const int reader = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);

  MetricsRegistry registry;
  Counter* dropped = (*registry.AddCounter("dropped_total", "D."))->Get();
  OtlpFileExporterOptions options;
  options.path = fifo;
  options.max_queued_spans = 4;
  options.dropped_spans = dropped;
  auto exporter = OtlpFileExporter::Open(options);
  ASSERT_TRUE(exporter.ok()) << exporter.status();

  // Whatever happens below, drain the pipe before the exporter is destroyed:
  // its destructor waits for the writer, which waits for a reader.
  std::string received;
  std::thread drain;
  auto start_draining = [&] {
    if (drain.joinable()) return;
    drain = std::thread([&] {
      fcntl(reader, F_SETFL, 0);  // Blocking reads from here on.
      char buffer[65536];
      ssize_t n;
      while ((n = read(reader, buffer, sizeof(buffer))) > 0) received.append(buffer, n);
    });
  };
  absl::Cleanup finish = [&] {
    start_draining();
    exporter->reset();  // Closes the pipe: the drain thread sees EOF.
    drain.join();
    close(reader);
  };

  // A line far larger than the pipe's buffer: the writer blocks on it.
  Span big = MakeSpan("big");
  big.attributes.emplace_back("blob", std::string(1 << 20, 'x'));
  ASSERT_TRUE((*exporter)->Export(std::move(big)));
  pollfd poll_reader = {reader, POLLIN, 0};
  ASSERT_EQ(poll(&poll_reader, 1, 60'000), 1);  // The writer took it and is writing.

  int accepted = 0;
  for (int i = 0; i < 10; ++i) accepted += (*exporter)->Export(MakeSpan("small")) ? 1 : 0;
  EXPECT_EQ(accepted, 4);
  EXPECT_EQ((*exporter)->dropped_spans(), 6u);
  EXPECT_EQ(dropped->value(), 6);

  start_draining();
  (*exporter)->Flush();
  EXPECT_EQ((*exporter)->written_spans(), 5u);
  std::move(finish).Invoke();
  size_t n_spans = 0;
  std::istringstream lines(received);
  for (std::string line; std::getline(lines, line);) {
    n_spans += Json::parse(line)["resourceSpans"][0]["scopeSpans"][0]["spans"].size();
  }
  EXPECT_EQ(n_spans, 5u);
}

TEST(OtlpFileExporterTest, OpenFailsForUnwritablePath) {
  OtlpFileExporterOptions options;
  options.path = "/nonexistent-dir/spans.jsonl";
  EXPECT_EQ(OtlpFileExporter::Open(options).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace pdserve::tracing
