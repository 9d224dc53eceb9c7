// Line plots (loss, learning rate) as standalone SVG text, so an HTML report can inline them with
// no script, image file or plotting dependency. Torch-free.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

struct Series {
  std::string label;
  std::vector<double> x, y;  // same length; a non-finite x or y breaks the line there
};

struct PlotOptions {
  std::string title, x_label, y_label;
  int width = 720, height = 360;
  bool log_y = false;  // every finite y must then be > 0
  // When set, the x axis is categorical: ticks at x = 0, 1, … labelled with these (slanted), in
  // place of numeric ticks; the plot area gives way to the longest label.
  std::vector<std::string> x_tick_labels{};
};

// An <svg> element (no XML declaration, so it can be inlined in HTML): title, axes with "nice"
// ticks, axis labels, a legend and one polyline per unbroken run of each series, in a fixed
// colour-blind-safe palette. With no finite point at all it draws the frame and says "no data".
// Throws kiln::Error when a series' x and y differ in length, or when log_y meets a y <= 0.
std::string line_plot_svg(const std::vector<Series>& series, const PlotOptions& options);

// About `target` evenly spaced ticks of step 1, 2 or 5 × 10^k covering [lo, hi]: the first is
// at or below lo, the last at or above hi ([0, 1] -> 0, 0.2, …, 1; [3, 97] -> 0, 20, …, 100).
// lo == hi widens the range around the value. Throws kiln::Error for non-finite bounds.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

// Text made safe inside XML/HTML elements and attributes (&, <, >, ", ').
std::string escape_xml(std::string_view text);

}  // namespace kiln
