#include "loadgen/sse.h"

#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

std::vector<std::string> Data(const std::vector<SseParser::Event>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.data);
  return out;
}

TEST(SseParserTest, DataLinesAndBlankLineDispatch) {
  SseParser p;
  std::vector<SseParser::Event> ev;
  p.Feed("data: {\"a\":1}\n\ndata: [DONE]\n\n", &ev);
  EXPECT_EQ(Data(ev), (std::vector<std::string>{"{\"a\":1}", "[DONE]"}));
}

TEST(SseParserTest, CrLfAndLoneCrEndLines) {
  SseParser p;
  std::vector<SseParser::Event> ev;
  p.Feed("data: one\r\n\r\ndata: two\r\rdata:three\n\n", &ev);
  EXPECT_EQ(Data(ev), (std::vector<std::string>{"one", "two", "three"}));
}

TEST(SseParserTest, SameEventsWhateverTheSplitPoint) {
  const std::string stream =
      ": keep-alive comment\r\nevent: message\r\ndata: first\r\ndata: second\r\n\r\n"
      "data: {\"choices\":[{\"text\":\"hi\"}]}\r\n\r\ndata: [DONE]\r\n\r\n";
  SseParser whole;
  std::vector<SseParser::Event> expected;
  whole.Feed(stream, &expected);
  ASSERT_EQ(expected.size(), 3u);
  EXPECT_EQ(expected[0].data, "first\nsecond");
  EXPECT_EQ(expected[0].event, "message");
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    for (size_t cut2 = cut; cut2 <= stream.size(); cut2 += 7) {
      SseParser p;
      std::vector<SseParser::Event> ev;
      p.Feed(stream.substr(0, cut), &ev);
      p.Feed(stream.substr(cut, cut2 - cut), &ev);
      p.Feed(stream.substr(cut2), &ev);
      ASSERT_EQ(Data(ev), Data(expected)) << "cut at " << cut << ", " << cut2;
    }
  }
}

TEST(SseParserTest, CommentsAndOtherFieldsAreNotEvents) {
  SseParser p;
  std::vector<SseParser::Event> ev;
  p.Feed(": ping\n\nid: 3\nretry: 10\n\n", &ev);
  EXPECT_TRUE(ev.empty());
}

TEST(SseParserTest, UnterminatedEventIsNotDispatched) {
  SseParser p;
  std::vector<SseParser::Event> ev;
  p.Feed("data: partial\n", &ev);
  EXPECT_TRUE(ev.empty());
  p.Feed("\n", &ev);
  EXPECT_EQ(Data(ev), (std::vector<std::string>{"partial"}));
}

TEST(CompletionEventTest, DoneSentinel) {
  auto e = ParseCompletionEvent(" [DONE] ");
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->done);
}

TEST(CompletionEventTest, CompletionsTextChunk) {
  auto e = ParseCompletionEvent(
      R"({"id":"c","object":"text_completion","choices":[{"index":0,"text":" Paris",)"
      R"("finish_reason":null}],"usage":null})");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->has_choice);
  EXPECT_EQ(e->text, " Paris");
  EXPECT_FALSE(e->completion_tokens.has_value());
  EXPECT_TRUE(e->finish_reason.empty());
}

TEST(CompletionEventTest, ChatDeltaChunk) {
  auto e =
      ParseCompletionEvent(R"({"choices":[{"delta":{"content":"Hi"},"finish_reason":"stop"}]})");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->text, "Hi");
  EXPECT_EQ(e->finish_reason, "stop");
}

TEST(CompletionEventTest, FinalUsageChunkWithNoChoices) {
  auto e = ParseCompletionEvent(
      R"({"choices":[],"usage":{"prompt_tokens":32,"completion_tokens":8,"total_tokens":40,)"
      R"("prompt_tokens_details":{"cached_tokens":16}}})");
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->has_choice);
  EXPECT_EQ(e->prompt_tokens, 32);
  EXPECT_EQ(e->completion_tokens, 8);
  EXPECT_EQ(e->cached_tokens, 16);
}

TEST(CompletionEventTest, ErrorPayload) {
  auto e = ParseCompletionEvent(R"({"error":{"message":"context too long","type":"invalid"}})");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->error, "context too long");
}

TEST(CompletionEventTest, NotJsonIsAnError) {
  EXPECT_FALSE(ParseCompletionEvent("hello").ok());
  EXPECT_FALSE(ParseCompletionEvent("[1,2]").ok());
}

}  // namespace
}  // namespace pdserve::loadgen
