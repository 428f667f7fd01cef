#include "http/http_types.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace pdserve::http {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(ParseQueryStringTest, DecodesPairsInOrder) {
  EXPECT_THAT(ParseQueryString("a=1&b=x%20y&c=p+q&flag&=v&&d="),
              ElementsAre(Pair("a", "1"), Pair("b", "x y"), Pair("c", "p q"), Pair("flag", ""),
                          Pair("", "v"), Pair("d", "")));
}

TEST(ParseQueryStringTest, KeepsMalformedEscapesVerbatim) {
  EXPECT_THAT(ParseQueryString("a=%zz&b=%4&c=100%"),
              ElementsAre(Pair("a", "%zz"), Pair("b", "%4"), Pair("c", "100%")));
}

TEST(PercentDecodeTest, PlusIsSpaceOnlyWhenAsked) {
  EXPECT_EQ(PercentDecode("a+b%2Bc", true), "a b+c");
  EXPECT_EQ(PercentDecode("a+b%2bc", false), "a+b+c");
}

TEST(HttpRequestTest, HeaderLookupIgnoresCase) {
  HttpRequest request;
  request.headers = {{"Content-Type", "application/json"}, {"X-Id", "1"}, {"x-id", "2"}};
  EXPECT_EQ(request.Header("content-type"), "application/json");
  EXPECT_EQ(request.Header("X-ID"), "1");
  EXPECT_EQ(request.Header("missing"), std::nullopt);
}

TEST(FormatSseEventTest, PrefixesEveryLineAndEndsWithBlankLine) {
  EXPECT_EQ(FormatSseEvent("{\"a\":1}"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(FormatSseEvent("one\ntwo", "delta"), "event: delta\ndata: one\ndata: two\n\n");
  EXPECT_EQ(FormatSseEvent("[DONE]"), "data: [DONE]\n\n");
}

}  // namespace
}  // namespace pdserve::http
