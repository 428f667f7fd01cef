#include "common/log.h"

#include <gtest/gtest.h>

#include "common/log_escape.h"

namespace pdserve {
namespace {

TEST(LogEscapeTest, ControlCharactersCannotForgeLinesOrDriveTheTerminal) {
  EXPECT_EQ(EscapeLogText("req-1\nI1203 forged line"), "req-1\\nI1203 forged line");
  EXPECT_EQ(EscapeLogText("a\rb\x1b[2Jc\x07\x7f"), "a\\rb\\x1b[2Jc\\x07\\x7f");
  EXPECT_EQ(EscapeLogText("csi \xc2\x9b"
                          "31m"),
            "csi \\xc2\\x9b31m");
  // Ordinary text, tabs and UTF-8 pass unchanged.
  EXPECT_EQ(EscapeLogText("caf\xc3\xa9\tok \xe6\x97\xa5"), "caf\xc3\xa9\tok \xe6\x97\xa5");
}

TEST(LogEscapeTest, QuoteEscapesAndCuts) {
  EXPECT_EQ(LogQuote("a\"b\n"), "\"a\\\"b\\n\"");
  EXPECT_EQ(LogQuote(std::string(10, 'x'), 4), "\"xxxx...\"");
}

TEST(LogEscapeTest, EveryLogMessageIsOneLine) {
  ::testing::internal::CaptureStderr();
  PDS_LOG(ERROR) << "user said: "
                 << "hi\nE1203 00:00:00.000000 1 fake.cc:1] owned\x1b[0m";
  const std::string out = ::testing::internal::GetCapturedStderr();
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.find('\n'), out.size() - 1) << out;
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
  EXPECT_NE(out.find("hi\\nE1203"), std::string::npos) << out;
}

}  // namespace
}  // namespace pdserve
