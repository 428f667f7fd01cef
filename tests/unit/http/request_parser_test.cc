#include "http/request_parser.h"

#include <string>

#include <gtest/gtest.h>

namespace pdserve::http {
namespace {

using State = ParseResult::State;

TEST(ParseRequestBytesTest, CompleteRequestWithPipelinedRest) {
  const std::string first =
      "POST /v1/completions?a=1&b=x%20y HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}";
  const ParseResult r = ParseRequestBytes(first + "GET / HTTP/1.1\r\n", RequestLimits());
  ASSERT_EQ(r.state, State::kComplete);
  EXPECT_EQ(r.consumed_bytes, first.size());
  EXPECT_EQ(r.request.method, "POST");
  EXPECT_EQ(r.request.path, "/v1/completions");
  ASSERT_EQ(r.request.query.size(), 2u);
  EXPECT_EQ(r.request.query[1].second, "x y");
  EXPECT_EQ(r.request.Header("host").value_or(""), "h");
  EXPECT_EQ(r.request.body, "{}");
}

TEST(ParseRequestBytesTest, IncompleteAndRejected) {
  EXPECT_EQ(ParseRequestBytes("GET / HTTP/1.1\r\nHost:", RequestLimits()).state,
            State::kIncomplete);
  EXPECT_EQ(ParseRequestBytes("", RequestLimits()).state, State::kIncomplete);
  const ParseResult bad = ParseRequestBytes("GET / HTTP/9\r\n\r\n", RequestLimits());
  EXPECT_EQ(bad.state, State::kRejected);
  EXPECT_EQ(bad.error.status, 400);

  RequestLimits small;
  small.max_body_bytes = 4;
  small.max_header_fields = 2;
  const ParseResult body =
      ParseRequestBytes("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", small);
  EXPECT_EQ(body.state, State::kRejected);
  EXPECT_EQ(body.error.status, 413);
  const ParseResult fields =
      ParseRequestBytes("GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", small);
  EXPECT_EQ(fields.state, State::kRejected);
  EXPECT_EQ(fields.error.status, 431);
  small.max_header_bytes = 32;
  const ParseResult header =
      ParseRequestBytes("GET / HTTP/1.1\r\nX-Long: " + std::string(100, 'a') + "\r\n\r\n", small);
  EXPECT_EQ(header.state, State::kRejected);
  EXPECT_EQ(header.error.status, 431);
}

}  // namespace
}  // namespace pdserve::http
