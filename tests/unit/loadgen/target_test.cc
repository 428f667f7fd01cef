#include "loadgen/target.h"

#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

TEST(ParseTargetTest, GrpcAndHttpForms) {
  auto g = ParseTarget("grpc://127.0.0.1:50051");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->kind, Target::Kind::kGrpc);
  EXPECT_EQ(g->host, "127.0.0.1");
  EXPECT_EQ(g->port, 50051);

  auto h = ParseTarget("http://localhost:8080/");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->kind, Target::Kind::kHttp);
  EXPECT_EQ(h->host, "localhost");
  EXPECT_EQ(h->port, 8080);
  EXPECT_EQ(h->base_path, "");

  auto prefixed = ParseTarget("http://gw:80/llm/");
  ASSERT_TRUE(prefixed.ok());
  EXPECT_EQ(prefixed->base_path, "/llm");

  auto v6 = ParseTarget("http://[::1]:9000");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 9000);
}

TEST(ParseTargetTest, RejectsWhatItCannotServe) {
  for (const char* bad :
       {"127.0.0.1:50051", "https://x:1", "grpc://host", "grpc://:1", "http://host:0",
        "http://host:99999", "http://host:abc", "grpc://host:1/path", "ftp://host:1"}) {
    auto t = ParseTarget(bad);
    EXPECT_FALSE(t.ok()) << bad;
    if (!t.ok()) EXPECT_NE(t.status().message().find("expected grpc://"), std::string::npos);
  }
}

}  // namespace
}  // namespace pdserve::loadgen
