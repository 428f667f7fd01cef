#include "planner/deployment.h"

#include "gtest/gtest.h"

namespace pdserve::planner {
namespace {

TEST(DeploymentTest, ParsesAndNames) {
  absl::StatusOr<Deployment> d = ParseDeployment("2P1D");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->n_prefill, 2);
  EXPECT_EQ(d->n_decode, 1);
  EXPECT_EQ(d->Name(), "2P1D");
  d = ParseDeployment("12p3d");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->Name(), "12P3D");
  d = ParseDeployment("colocated3");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->n_mixed, 3);
  EXPECT_EQ(d->Name(), "colocated3");
  d = ParseDeployment("C2");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->n_mixed, 2);
}

TEST(DeploymentTest, RejectsMalformed) {
  for (const char* bad : {"", "P1D", "1P", "0P1D", "1P0D", "1x1d", "colocated", "colocated0", "c-1",
                          "1P1D1", "99999999P1D", "1P 1D"}) {
    EXPECT_FALSE(ParseDeployment(bad).ok()) << bad;
  }
}

TEST(DeploymentTest, EnumeratesEverySplitUpToTheNodeCount) {
  const std::vector<Deployment> all = EnumerateDeployments(4);
  std::vector<std::string> names;
  for (const Deployment& d : all) names.push_back(d.Name());
  EXPECT_EQ(names, (std::vector<std::string>{"colocated1", "colocated2", "colocated3", "colocated4",
                                             "1P1D", "1P2D", "1P3D", "2P1D", "2P2D", "3P1D"}));
}

}  // namespace
}  // namespace pdserve::planner
