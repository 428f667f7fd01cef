// A small SVG writer for line plots (latency CDFs, figures against rate):
// axes with round-number ticks, one polyline per series, a legend.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pdserve::loadgen {

struct SvgSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite ones are skipped
  bool markers = false;                           // a dot at each point
};

struct SvgPlot {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<SvgSeries> series;
  bool y_from_zero = true;  // else the axis starts at the smallest y
  std::string note;         // a line under the plot, e.g. what was left out
};

// A standalone SVG document.
std::string RenderSvg(const SvgPlot& plot);

// Escapes &, <, >, " and ' for text and attribute values; drops control
// characters XML 1.0 does not allow.
std::string XmlEscape(std::string_view text);

// Round-number ticks (1, 2, 5 x 10^k steps) covering [lo, hi], about
// `target` of them.
std::vector<double> NiceTicks(double lo, double hi, int target);

}  // namespace pdserve::loadgen
