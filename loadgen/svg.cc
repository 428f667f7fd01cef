#include "loadgen/svg.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pdserve::loadgen {
namespace {

constexpr double kWidth = 760, kHeight = 460;
constexpr double kLeft = 75, kRight = 190, kTop = 45, kBottom = 70;
constexpr const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string Num(double v) { return absl::StrFormat("%.2f", v); }

std::string TickLabel(double v) {
  if (std::fabs(v) < 1e-12) return "0";
  return absl::StrFormat("%g", v);
}

}  // namespace

std::string XmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') break;
        out.push_back(c);
    }
  }
  return out;
}

std::vector<double> NiceTicks(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  // Integer multiples of the step, so rounding does not accumulate.
  std::vector<double> ticks;
  const double first = std::floor(lo / step + 1e-9);
  const double last = std::ceil(hi / step - 1e-9);
  for (double k = first; k <= last; k += 1) ticks.push_back(k == 0 ? 0.0 : k * step);
  if (ticks.empty()) ticks.push_back(lo);
  return ticks;
}

std::string RenderSvg(const SvgPlot& plot) {
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double y_lo = x_lo, y_hi = -x_lo;
  for (const SvgSeries& s : plot.series) {
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x_lo = std::min(x_lo, x);
      x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y);
      y_hi = std::max(y_hi, y);
    }
  }
  const bool empty = !std::isfinite(x_lo);
  if (empty) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  if (plot.y_from_zero) y_lo = std::min(0.0, y_lo);
  if (x_lo > 0 && x_lo < 0.25 * x_hi) x_lo = 0;  // start at 0 when it is close anyway
  const std::vector<double> xt = NiceTicks(x_lo, x_hi, 6);
  const std::vector<double> yt = NiceTicks(y_lo, y_hi, 5);
  x_lo = std::min(x_lo, xt.front());
  x_hi = std::max(x_hi, xt.back());
  y_lo = std::min(y_lo, yt.front());
  y_hi = std::max(y_hi, yt.back());
  if (!(x_hi > x_lo)) x_hi = x_lo + 1;
  if (!(y_hi > y_lo)) y_hi = y_lo + 1;
  const double pw = kWidth - kLeft - kRight, ph = kHeight - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (x - x_lo) / (x_hi - x_lo) * pw; };
  auto py = [&](double y) { return kTop + ph - (y - y_lo) / (y_hi - y_lo) * ph; };

  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
      static_cast<int>(kWidth), static_cast<int>(kHeight), static_cast<int>(kWidth),
      static_cast<int>(kHeight), static_cast<int>(kWidth), static_cast<int>(kHeight));
  absl::StrAppend(&svg, "<text x=\"", Num(kWidth / 2), "\" y=\"24\" text-anchor=\"middle\" ",
                  "font-size=\"15\">", XmlEscape(plot.title), "</text>\n");
  // Grid and tick labels.
  for (double t : xt) {
    absl::StrAppend(&svg, "<line x1=\"", Num(px(t)), "\" y1=\"", Num(kTop), "\" x2=\"", Num(px(t)),
                    "\" y2=\"", Num(kTop + ph), "\" stroke=\"#e0e0e0\"/>\n");
    absl::StrAppend(&svg, "<text x=\"", Num(px(t)), "\" y=\"", Num(kTop + ph + 18),
                    "\" text-anchor=\"middle\">", XmlEscape(TickLabel(t)), "</text>\n");
  }
  for (double t : yt) {
    absl::StrAppend(&svg, "<line x1=\"", Num(kLeft), "\" y1=\"", Num(py(t)), "\" x2=\"",
                    Num(kLeft + pw), "\" y2=\"", Num(py(t)), "\" stroke=\"#e0e0e0\"/>\n");
    absl::StrAppend(&svg, "<text x=\"", Num(kLeft - 8), "\" y=\"", Num(py(t) + 4),
                    "\" text-anchor=\"end\">", XmlEscape(TickLabel(t)), "</text>\n");
  }
  absl::StrAppend(&svg, "<rect x=\"", Num(kLeft), "\" y=\"", Num(kTop), "\" width=\"", Num(pw),
                  "\" height=\"", Num(ph), "\" fill=\"none\" stroke=\"black\"/>\n");
  absl::StrAppend(&svg, "<text x=\"", Num(kLeft + pw / 2), "\" y=\"", Num(kTop + ph + 40),
                  "\" text-anchor=\"middle\">", XmlEscape(plot.x_label), "</text>\n");
  absl::StrAppend(&svg, "<text transform=\"translate(18 ", Num(kTop + ph / 2),
                  ") rotate(-90)\" text-anchor=\"middle\">", XmlEscape(plot.y_label), "</text>\n");
  if (empty) {
    absl::StrAppend(&svg, "<text x=\"", Num(kLeft + pw / 2), "\" y=\"", Num(kTop + ph / 2),
                    "\" text-anchor=\"middle\" fill=\"#888888\">no data</text>\n");
  }
  // Series and legend.
  for (size_t i = 0; i < plot.series.size(); ++i) {
    const SvgSeries& s = plot.series[i];
    const char* color = kPalette[i % std::size(kPalette)];
    std::string points;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      absl::StrAppend(&points, points.empty() ? "" : " ", Num(px(x)), ",", Num(py(y)));
    }
    if (!points.empty()) {
      absl::StrAppend(&svg, "<polyline fill=\"none\" stroke=\"", color,
                      "\" stroke-width=\"2\" points=\"", points, "\"/>\n");
    }
    if (s.markers) {
      for (const auto& [x, y] : s.points) {
        if (!std::isfinite(x) || !std::isfinite(y)) continue;
        absl::StrAppend(&svg, "<circle cx=\"", Num(px(x)), "\" cy=\"", Num(py(y)),
                        "\" r=\"3\" fill=\"", color, "\"/>\n");
      }
    }
    const double ly = kTop + 10 + 20 * static_cast<double>(i);
    absl::StrAppend(&svg, "<line x1=\"", Num(kLeft + pw + 15), "\" y1=\"", Num(ly), "\" x2=\"",
                    Num(kLeft + pw + 40), "\" y2=\"", Num(ly), "\" stroke=\"", color,
                    "\" stroke-width=\"2\"/>\n");
    absl::StrAppend(&svg, "<text x=\"", Num(kLeft + pw + 46), "\" y=\"", Num(ly + 4), "\">",
                    XmlEscape(s.name), "</text>\n");
  }
  if (!plot.note.empty()) {
    absl::StrAppend(&svg, "<text x=\"", Num(kLeft), "\" y=\"", Num(kHeight - 8),
                    "\" font-size=\"11\" fill=\"#555555\">", XmlEscape(plot.note), "</text>\n");
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace pdserve::loadgen
