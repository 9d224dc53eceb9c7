// The report's SVG line plots: structure, escaping, nice ticks, polylines and NaN gaps, log axes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "lab/svg_plot.h"
#include "util/error.h"

namespace kiln {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = s.find(needle); pos != std::string::npos; pos = s.find(needle, pos + 1)) ++n;
  return n;
}

// "<g" also prefixes nothing else kiln writes, but "<g " / "<g>" keeps the count honest.
void expect_balanced(const std::string& svg) {
  EXPECT_EQ(count(svg, "<svg"), 1u);
  EXPECT_EQ(count(svg, "</svg>"), 1u);
  EXPECT_EQ(count(svg, "<g ") + count(svg, "<g>"), count(svg, "</g>"));
  EXPECT_EQ(count(svg, "<text"), count(svg, "</text>"));
  EXPECT_EQ(count(svg, "<polyline"), count(svg, "</polyline>"));
  EXPECT_EQ(count(svg, "<"), count(svg, ">"));
}

// The points="..." lists of every polyline, each as its number of points.
std::vector<size_t> polyline_lengths(const std::string& svg) {
  std::vector<size_t> out;
  for (size_t pos = svg.find("<polyline"); pos != std::string::npos; pos = svg.find("<polyline", pos + 1)) {
    const size_t begin = svg.find("points=\"", pos) + 8;
    const size_t end = svg.find('"', begin);
    const std::string points = svg.substr(begin, end - begin);
    out.push_back(points.empty() ? 0 : count(points, " ") + 1);
  }
  return out;
}

void expect_ticks(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << i;
}

TEST(NiceTicks, UnitRange) { expect_ticks(nice_ticks(0, 1, 5), {0, 0.2, 0.4, 0.6, 0.8, 1.0}); }

TEST(NiceTicks, RoundsOutward) { expect_ticks(nice_ticks(3, 97, 5), {0, 20, 40, 60, 80, 100}); }

TEST(NiceTicks, SmallAndNegativeRanges) {
  expect_ticks(nice_ticks(0.0012, 0.0049, 5), {0.001, 0.002, 0.003, 0.004, 0.005});
  expect_ticks(nice_ticks(-1.3, 0.7, 5), {-1.5, -1.0, -0.5, 0.0, 0.5, 1.0});
  // Exactly representable ticks, so labels and comparisons need no tolerance.
  EXPECT_EQ(nice_ticks(0, 1, 5)[3], 0.6);
}

TEST(NiceTicks, DegenerateRangeWidens) {
  const std::vector<double> t = nice_ticks(5, 5, 5);
  ASSERT_GE(t.size(), 2u);
  EXPECT_LT(t.front(), 5);
  EXPECT_GT(t.back(), 5);
  EXPECT_THROW(nice_ticks(0, kNaN, 5), Error);
}

TEST(LinePlot, StructureLabelsAndEscaping) {
  const std::vector<Series> series = {{"loss a<b", {0, 1, 2, 3}, {1.0, 0.7, 0.5, 0.45}},
                                      {"ema & \"smooth\"", {0, 1, 2, 3}, {1.0, 0.8, 0.6, 0.5}}};
  PlotOptions options;
  options.title = "a<b";
  options.x_label = "step";
  options.y_label = "loss";
  const std::string svg = line_plot_svg(series, options);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  expect_balanced(svg);
  EXPECT_NE(svg.find(">a&lt;b</text>"), std::string::npos);
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
  EXPECT_NE(svg.find("loss a&lt;b"), std::string::npos);
  EXPECT_NE(svg.find("ema &amp; &quot;smooth&quot;"), std::string::npos);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_NE(svg.find(">loss</text>"), std::string::npos);
  // Both series' colours appear in the legend and on their lines.
  EXPECT_GE(count(svg, "#0072B2"), 2u);
  EXPECT_GE(count(svg, "#E69F00"), 2u);
  // Tick labels: x in [0, 3] steps by 1, y in [0.45, 1] by 0.2 from 0.4.
  EXPECT_NE(svg.find(">3</text>"), std::string::npos);
  EXPECT_NE(svg.find(">0.6</text>"), std::string::npos);
  EXPECT_NE(svg.find(">0.4</text>"), std::string::npos);
  EXPECT_NE(svg.find(">1.0</text>"), std::string::npos);
}

TEST(LinePlot, OnePolylinePerSeriesWithAllPoints) {
  std::vector<double> x, y;
  for (int i = 0; i < 57; ++i) {
    x.push_back(i);
    y.push_back(std::exp(-i / 20.0));
  }
  const std::string svg = line_plot_svg({{"loss", x, y}, {"short", {0, 10}, {0.5, 0.4}}}, {});
  EXPECT_EQ(polyline_lengths(svg), (std::vector<size_t>{57, 2}));
}

TEST(LinePlot, NaNSplitsTheLine) {
  const std::string svg =
      line_plot_svg({{"loss", {0, 1, 2, 3, 4, 5, 6}, {1, 0.9, kNaN, 0.7, 0.6, 0.5, 0.4}}}, {});
  EXPECT_EQ(polyline_lengths(svg), (std::vector<size_t>{2, 4}));
  expect_balanced(svg);
}

TEST(LinePlot, EmptyInputSaysNoData) {
  PlotOptions options;
  options.title = "loss";
  for (const std::vector<Series>& input : {std::vector<Series>{}, std::vector<Series>{{"nothing", {}, {}}},
                                           std::vector<Series>{{"all nan", {0, 1}, {kNaN, kNaN}}}}) {
    const std::string svg = line_plot_svg(input, options);
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_NE(svg.find("no data"), std::string::npos);
    EXPECT_EQ(count(svg, "<polyline"), 0u);
    expect_balanced(svg);
  }
}

TEST(LinePlot, LogAxis) {
  PlotOptions options;
  options.log_y = true;
  const std::string svg = line_plot_svg({{"lr", {0, 1, 2, 3}, {1e-4, 5e-5, 1e-5, 2e-6}}}, options);
  expect_balanced(svg);
  EXPECT_NE(svg.find(">0.0001</text>"), std::string::npos);
  EXPECT_NE(svg.find(">1e-06</text>"), std::string::npos);
  EXPECT_EQ(polyline_lengths(svg), (std::vector<size_t>{4}));
}

TEST(LinePlot, LogAxisRejectsNonPositive) {
  PlotOptions options;
  options.log_y = true;
  EXPECT_THROW(line_plot_svg({{"lr", {0, 1, 2}, {1e-4, 0.0, 1e-5}}}, options), Error);
  EXPECT_THROW(line_plot_svg({{"lr", {0, 1}, {1e-4, -1.0}}}, options), Error);
}

TEST(LinePlot, MismatchedLengthsThrow) {
  EXPECT_THROW(line_plot_svg({{"bad", {0, 1, 2}, {1, 2}}}, {}), Error);
}

}  // namespace
}  // namespace kiln
