#include "loadgen/svg.h"

#include <cmath>
#include <sstream>

#include <gtest/gtest.h>
#include <boost/property_tree/ptree.hpp>
#include <boost/property_tree/xml_parser.hpp>

namespace pdserve::loadgen {
namespace {

namespace pt = boost::property_tree;

// Parses with Boost's XML reader, which throws on malformed documents.
pt::ptree ParseXml(const std::string& text) {
  std::istringstream in(text);
  pt::ptree tree;
  pt::read_xml(in, tree);
  return tree;
}

int Count(const pt::ptree& node, const std::string& name) {
  int n = 0;
  for (const auto& [key, child] : node) {
    if (key == name) ++n;
    n += Count(child, name);
  }
  return n;
}

SvgPlot TwoSeries() {
  SvgPlot plot;
  plot.title = "TTFT <p99> & \"friends\" 'quoted'";
  plot.x_label = "ms";
  plot.y_label = "fraction";
  plot.series.push_back({"rate 1 <low>", {{1, 0.1}, {2, 0.5}, {3, 1.0}}, false});
  plot.series.push_back({"rate inf & up", {{1.5, 0.2}, {NAN, 0.3}, {4, 1.0}}, true});
  plot.note = "a < b";
  return plot;
}

TEST(SvgTest, IsWellFormedXmlWithOnePolylinePerSeries) {
  const std::string svg = RenderSvg(TwoSeries());
  pt::ptree tree;
  ASSERT_NO_THROW(tree = ParseXml(svg)) << svg;
  ASSERT_EQ(tree.count("svg"), 1u);
  const pt::ptree& root = tree.get_child("svg");
  EXPECT_EQ(root.get<std::string>("<xmlattr>.xmlns"), "http://www.w3.org/2000/svg");
  EXPECT_EQ(Count(root, "polyline"), 2);
  EXPECT_EQ(Count(root, "circle"), 2);  // markers of the second series; NaN skipped
}

TEST(SvgTest, TextIsEscapedAndRoundTrips) {
  const std::string svg = RenderSvg(TwoSeries());
  const pt::ptree tree = ParseXml(svg);
  bool found_title = false, found_legend = false;
  for (const auto& [key, child] : tree.get_child("svg")) {
    if (key != "text") continue;
    const std::string text = child.get_value<std::string>();
    found_title |= text == "TTFT <p99> & \"friends\" 'quoted'";
    found_legend |= text == "rate inf & up";
  }
  EXPECT_TRUE(found_title);
  EXPECT_TRUE(found_legend);
  EXPECT_EQ(svg.find("<p99>"), std::string::npos);
}

TEST(SvgTest, EmptyPlotStillRendersAndSaysSo) {
  SvgPlot plot;
  plot.title = "nothing";
  plot.series.push_back({"empty", {}, true});
  const std::string svg = RenderSvg(plot);
  ASSERT_NO_THROW(ParseXml(svg));
  EXPECT_NE(svg.find("no data"), std::string::npos);
}

TEST(SvgTest, XmlEscapeDropsDisallowedControlCharacters) {
  EXPECT_EQ(XmlEscape(std::string("a\x01<b>\x1f&c", 9)), "a&lt;b&gt;&amp;c");
}

TEST(NiceTicksTest, RoundStepsCoveringTheRange) {
  EXPECT_EQ(NiceTicks(0, 97, 5), (std::vector<double>{0, 20, 40, 60, 80, 100}));
  const std::vector<double> unit = NiceTicks(0, 1, 5);
  ASSERT_EQ(unit.size(), 6u);
  for (size_t i = 0; i < unit.size(); ++i) EXPECT_NEAR(unit[i], 0.2 * i, 1e-12);
  const std::vector<double> t = NiceTicks(3, 4, 4);
  ASSERT_FALSE(t.empty());
  EXPECT_LE(t.front(), 3);
  EXPECT_GE(t.back(), 4);
}

}  // namespace
}  // namespace pdserve::loadgen
