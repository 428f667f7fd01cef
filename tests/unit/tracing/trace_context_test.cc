#include "tracing/trace_context.h"

#include <set>

#include <gtest/gtest.h>

namespace pdserve::tracing {
namespace {

constexpr char kValid[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceparentTest, ParsesTheSpecExample) {
  absl::StatusOr<TraceParent> parent = ParseTraceparent(kValid);
  ASSERT_TRUE(parent.ok()) << parent.status();
  EXPECT_EQ(parent->trace_id.ToHex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(parent->parent_id.ToHex(), "00f067aa0ba902b7");
  EXPECT_EQ(parent->flags, 0x01);
  EXPECT_TRUE(parent->sampled());
  EXPECT_EQ(FormatTraceparent(*parent), kValid);
}

TEST(TraceparentTest, KeepsUnknownFlagBitsAndUnsampled) {
  auto parent = ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  ASSERT_TRUE(parent.ok());
  EXPECT_FALSE(parent->sampled());
  parent = ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff");
  ASSERT_TRUE(parent.ok());
  EXPECT_EQ(parent->flags, 0xff);
}

TEST(TraceparentTest, TrimsSurroundingWhitespace) {
  EXPECT_TRUE(ParseTraceparent(std::string(" \t") + kValid + "  ").ok());
}

TEST(TraceparentTest, AcceptsHigherVersionsWithExtraFields) {
  EXPECT_TRUE(ParseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").ok());
  EXPECT_TRUE(
      ParseTraceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever").ok());
  // ...but the extra data must start with '-'.
  EXPECT_FALSE(
      ParseTraceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what").ok());
}

TEST(TraceparentTest, RejectsInvalidHeaders) {
  for (const char* bad : {
           "", "   ",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",        // No flags.
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",  // 00 has no extras.
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",      // Short flags.
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     // Forbidden version.
           "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     // Bad version.
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",     // Uppercase.
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",     // Uppercase.
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",     // Uppercase flags.
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",     // Zero trace id.
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",     // Zero parent id.
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     // Bad separator.
           "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",     // Misplaced dash.
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",     // Non-hex.
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 x",   // Trailing data.
       }) {
    absl::StatusOr<TraceParent> parent = ParseTraceparent(bad);
    EXPECT_FALSE(parent.ok()) << "accepted: '" << bad << "'";
    if (!parent.ok()) {
      EXPECT_EQ(parent.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(IdsTest, HexRoundTripAndValidity) {
  EXPECT_EQ(TraceId::FromHex("4bf92f3577b34da6a3ce929d0e0e4736")->ToHex(),
            "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(TraceId::FromHex("00000000000000000000000000000000"), std::nullopt);
  EXPECT_EQ(SpanId::FromHex("00f067aa0ba902b7")->ToHex(), "00f067aa0ba902b7");
  EXPECT_EQ(SpanId::FromHex("00f067aa0ba902b"), std::nullopt);
  EXPECT_FALSE(TraceId{}.valid());
  EXPECT_FALSE(SpanId{}.valid());
}

TEST(IdsTest, RandomIdsAreValidAndDistinct) {
  std::set<std::string> trace_ids;
  std::set<std::string> span_ids;
  for (int i = 0; i < 1000; ++i) {
    const TraceId trace = TraceId::Random();
    const SpanId span = SpanId::Random();
    EXPECT_TRUE(trace.valid());
    EXPECT_TRUE(span.valid());
    trace_ids.insert(trace.ToHex());
    span_ids.insert(span.ToHex());
  }
  EXPECT_EQ(trace_ids.size(), 1000u);
  EXPECT_EQ(span_ids.size(), 1000u);
}

TEST(SpanContextTest, ServerSpanContinuesTheClientsTrace) {
  const SpanContext span = StartServerSpan(kValid);
  EXPECT_EQ(span.trace_id.ToHex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  ASSERT_TRUE(span.parent_span_id.has_value());
  EXPECT_EQ(span.parent_span_id->ToHex(), "00f067aa0ba902b7");
  EXPECT_NE(span.span_id.ToHex(), "00f067aa0ba902b7");
  EXPECT_TRUE(span.span_id.valid());
  // Downstream calls carry our span as their parent, in the same trace.
  auto downstream = ParseTraceparent(span.ToTraceparent());
  ASSERT_TRUE(downstream.ok());
  EXPECT_EQ(downstream->trace_id, span.trace_id);
  EXPECT_EQ(downstream->parent_id, span.span_id);
  EXPECT_EQ(downstream->flags, 0x01);
}

TEST(SpanContextTest, ServerSpanStartsANewTraceWhenHeaderMissingOrInvalid) {
  for (std::optional<std::string_view> header :
       {std::optional<std::string_view>(), std::optional<std::string_view>("garbage")}) {
    const SpanContext span = StartServerSpan(header);
    EXPECT_TRUE(span.trace_id.valid());
    EXPECT_TRUE(span.span_id.valid());
    EXPECT_FALSE(span.parent_span_id.has_value());
    EXPECT_TRUE(span.sampled());
  }
  EXPECT_NE(StartServerSpan(std::nullopt).trace_id, StartServerSpan(std::nullopt).trace_id);
}

TEST(SpanContextTest, ChildSpanSharesTraceAndPointsAtParent) {
  const SpanContext parent = StartServerSpan(std::nullopt);
  const SpanContext child = StartChildSpan(parent);
  EXPECT_EQ(child.trace_id, parent.trace_id);
  EXPECT_EQ(child.parent_span_id, parent.span_id);
  EXPECT_NE(child.span_id, parent.span_id);
  EXPECT_EQ(child.flags, parent.flags);
}

}  // namespace
}  // namespace pdserve::tracing
