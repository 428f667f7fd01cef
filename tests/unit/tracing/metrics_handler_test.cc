#include "tracing/metrics_handler.h"

#include <cstdio>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "http/http_server.h"
#include "tests/unit/tracing/exposition_parser.h"
#include "tracing/pdserve_metrics.h"

namespace pdserve::tracing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// Runs a shell command and returns its stdout.
std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  return out;
}

TEST(MetricsHandlerTest, ServesTheRegistryOverHttp) {
  MetricsRegistry registry;
  absl::StatusOr<PdserveMetrics> metrics = PdserveMetrics::Register(registry);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  metrics->prompt_tokens_total->Increment(42);
  metrics->error(ErrorKind::kOverloaded).Increment();
  metrics->time_to_first_token_seconds->Observe(0.03);

  http::HttpServerOptions options;
  options.bind_address = "127.0.0.1";
  http::HttpServer server(options);
  AddMetricsRoute(server, registry);
  ASSERT_TRUE(server.Start().ok());
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port()) + "/metrics";

  const std::string headers = RunCommand("curl -sS --max-time 30 -o /dev/null -D - " + url);
  EXPECT_THAT(headers, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(headers, HasSubstr("Content-Type: text/plain; version=0.0.4; charset=utf-8"));

  const std::string body = RunCommand("curl -sS --max-time 30 " + url);
  EXPECT_EQ(body, registry.RenderText());
  std::string error;
  testing::ParseExposition(body, &error);
  EXPECT_EQ(error, "");
  EXPECT_THAT(body, HasSubstr("pdserve:prompt_tokens_total 42\n"));
  EXPECT_THAT(body, HasSubstr("pdserve:request_errors_total{kind=\"overloaded\"} 1\n"));
  EXPECT_THAT(body, HasSubstr("pdserve:time_to_first_token_seconds_bucket{le=\"0.04\"} 1\n"));

  // Scrapes see live values.
  metrics->prompt_tokens_total->Increment(8);
  EXPECT_THAT(RunCommand("curl -sS --max-time 30 " + url),
              HasSubstr("pdserve:prompt_tokens_total 50\n"));
  server.Stop(absl::Seconds(5));
}

// Both servers put /metrics behind their API key through the authorizer.
TEST(MetricsHandlerTest, RefusesWhatTheAuthorizerRefuses) {
  MetricsRegistry registry;
  absl::StatusOr<PdserveMetrics> metrics = PdserveMetrics::Register(registry);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  metrics->prompt_tokens_total->Increment(7);

  http::HttpServerOptions options;
  options.bind_address = "127.0.0.1";
  http::HttpServer server(options);
  AddMetricsRoute(
      server, registry,
      [](const http::HttpRequest& request) {
        return request.Header("Authorization") == "Bearer sk-good";
      },
      "missing or invalid API key\n");
  ASSERT_TRUE(server.Start().ok());
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port()) + "/metrics";

  EXPECT_THAT(RunCommand("curl -sS --max-time 30 -D - " + url),
              AllOf(HasSubstr("HTTP/1.1 401"), HasSubstr("missing or invalid API key")));
  EXPECT_THAT(RunCommand("curl -sS --max-time 30 -D - -H 'Authorization: Bearer sk-bad' " + url),
              HasSubstr("HTTP/1.1 401"));
  const std::string good =
      RunCommand("curl -sS --max-time 30 -D - -H 'Authorization: Bearer sk-good' " + url);
  EXPECT_THAT(good, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(good, HasSubstr("pdserve:prompt_tokens_total 7\n"));
  server.Stop(absl::Seconds(5));
}

}  // namespace
}  // namespace pdserve::tracing
