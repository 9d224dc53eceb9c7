#include "lab/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string_view>

#include "util/error.h"

namespace kiln {
namespace {

// Okabe & Ito's palette, which stays distinguishable under the common colour-vision deficiencies;
// the yellow is last because it is faint on white.
constexpr const char* kPalette[] = {"#0072B2", "#E69F00", "#009E73", "#D55E00",
                                    "#CC79A7", "#56B4E9", "#000000", "#F0E442"};

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// A tick label with just the digits the tick step needs (0.2 not 0.200000, 100 not 1e+02).
std::string tick_label(double v, double step) {
  char buf[32];
  const double mag = std::max(std::abs(v), step);
  if (mag >= 1e6 || mag < 1e-4) {
    std::snprintf(buf, sizeof buf, "%.3g", v);
  } else {
    const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v == 0.0 ? 0.0 : v);
  }
  return buf;
}

// Heckbert's "nice number": 1, 2, 5 or 10 × 10^k near x, as mantissa and exponent so that
// multiples can be formed without accumulating 0.1-style rounding error.
void nice_number(double x, bool round, int* mantissa, int* exponent) {
  int e = static_cast<int>(std::floor(std::log10(x)));
  const double f = x / std::pow(10.0, e);
  int m;
  if (round)
    m = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  else
    m = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  if (m == 10) {
    m = 1;
    ++e;
  }
  *mantissa = m;
  *exponent = e;
}

// k · m · 10^e, dividing by the exact power of ten when e < 0 so 3 · 0.2 comes out as 0.6.
double scaled(long long k, int m, int e) {
  const double km = static_cast<double>(k * m);
  return e >= 0 ? km * std::pow(10.0, e) : km / std::pow(10.0, -e);
}

struct Axis {
  std::vector<double> ticks;  // in plot space (log10 of the value for a log axis)
  std::vector<std::string> labels;
  double lo, hi;
};

Axis linear_axis(double lo, double hi) {
  Axis a;
  a.ticks = nice_ticks(lo, hi, 5);
  const double step = a.ticks.size() > 1 ? a.ticks[1] - a.ticks[0] : 1.0;
  for (double t : a.ticks) a.labels.push_back(tick_label(t, step));
  a.lo = a.ticks.front();
  a.hi = a.ticks.back();
  return a;
}

// Decades covering [lo, hi] (values > 0), every n-th decade when there are too many to label.
Axis log_axis(double lo, double hi) {
  Axis a;
  int e0 = static_cast<int>(std::floor(std::log10(lo) + 1e-12));
  int e1 = static_cast<int>(std::ceil(std::log10(hi) - 1e-12));
  if (e1 <= e0) e1 = e0 + 1;
  const int stride = std::max(1, (e1 - e0 + 5) / 6);
  e0 -= ((e0 % stride) + stride) % stride;
  while ((e1 - e0) % stride != 0) ++e1;
  for (int e = e0; e <= e1; e += stride) {
    a.ticks.push_back(e);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", std::pow(10.0, e));
    a.labels.push_back(buf);
  }
  a.lo = e0;
  a.hi = e1;
  return a;
}

bool finite_point(double x, double y) { return std::isfinite(x) && std::isfinite(y); }

}  // namespace

std::string escape_xml(std::string_view text) {
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
        out += c;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) throw Error("nice_ticks: the range must be finite");
  if (lo > hi) std::swap(lo, hi);
  if (lo == hi) {
    const double pad = lo == 0.0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  target = std::max(target, 2);
  int m, e;
  nice_number(hi - lo, false, &m, &e);
  nice_number(scaled(1, m, e) / (target - 1), true, &m, &e);
  const double step = scaled(1, m, e);
  const auto k0 = static_cast<long long>(std::floor(lo / step + 1e-9));
  const auto k1 = static_cast<long long>(std::ceil(hi / step - 1e-9));
  std::vector<double> ticks;
  for (long long k = k0; k <= k1; ++k) ticks.push_back(scaled(k, m, e));
  return ticks;
}

std::string line_plot_svg(const std::vector<Series>& series, const PlotOptions& options) {
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const Series& s : series) {
    if (s.x.size() != s.y.size())
      throw Error("plot: series '" + s.label + "' has " + std::to_string(s.x.size()) + " x values but " +
                  std::to_string(s.y.size()) + " y values");
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!finite_point(s.x[i], s.y[i])) continue;
      if (options.log_y && s.y[i] <= 0.0)
        throw Error("plot: series '" + s.label + "' has y = " + std::to_string(s.y[i]) +
                    " at x = " + std::to_string(s.x[i]) + ", which a logarithmic axis cannot show");
      x_lo = std::min(x_lo, s.x[i]);
      x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, s.y[i]);
      y_hi = std::max(y_hi, s.y[i]);
    }
  }

  const double W = std::max(options.width, 200), H = std::max(options.height, 120);
  // The legend's column is as wide as its longest label (about 6.6 px a character at 12 px), so
  // labels are never cut; the plot area gives way, down to half the width.
  size_t longest = 0;
  for (const auto& s : series) longest = std::max(longest, s.label.size());
  const double legend = std::clamp(50.0 + 6.6 * static_cast<double>(longest), 160.0, W / 2);
  // Slanted category labels (about 6.6 px a character at 40°) need room below the axis.
  size_t longest_tick = 0;
  for (const auto& l : options.x_tick_labels) longest_tick = std::max(longest_tick, l.size());
  const double tick_room =
      options.x_tick_labels.empty() ? 0.0 : std::min(H / 3, 6.6 * static_cast<double>(longest_tick) * 0.65);
  const double left = 70, right = W - legend, top = 36, bottom = H - 48 - tick_room;
  std::string out;
  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(W) + "\" height=\"" + num(H) +
         "\" viewBox=\"0 0 " + num(W) + " " + num(H) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  out += "<rect x=\"0\" y=\"0\" width=\"" + num(W) + "\" height=\"" + num(H) + "\" fill=\"white\"/>\n";
  if (!options.title.empty())
    out += "<text x=\"" + num(W / 2) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" +
           escape_xml(options.title) + "</text>\n";
  out += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(right - left) +
         "\" height=\"" + num(bottom - top) + "\" fill=\"none\" stroke=\"#444\"/>\n";

  if (!(x_lo <= x_hi)) {
    out += "<text x=\"" + num((left + right) / 2) + "\" y=\"" + num((top + bottom) / 2) +
           "\" text-anchor=\"middle\" fill=\"#666\">no data</text>\n</svg>\n";
    return out;
  }

  Axis xa;
  if (options.x_tick_labels.empty()) {
    xa = linear_axis(x_lo, x_hi);
  } else {
    for (size_t i = 0; i < options.x_tick_labels.size(); ++i) {
      xa.ticks.push_back(static_cast<double>(i));
      xa.labels.push_back(options.x_tick_labels[i]);
    }
    xa.lo = std::min(x_lo, 0.0) - 0.5;
    xa.hi = std::max(x_hi, static_cast<double>(options.x_tick_labels.size() - 1)) + 0.5;
  }
  const Axis ya = options.log_y ? log_axis(y_lo, y_hi) : linear_axis(y_lo, y_hi);
  auto px = [&](double x) { return left + (x - xa.lo) / (xa.hi - xa.lo) * (right - left); };
  auto py = [&](double y) {
    const double v = options.log_y ? std::log10(y) : y;
    return bottom - (v - ya.lo) / (ya.hi - ya.lo) * (bottom - top);
  };

  out += "<g class=\"grid\" stroke=\"#ddd\">\n";
  for (double t : xa.ticks)
    out += "<line x1=\"" + num(px(t)) + "\" y1=\"" + num(top) + "\" x2=\"" + num(px(t)) + "\" y2=\"" +
           num(bottom) + "\"/>\n";
  for (double t : ya.ticks) {
    const double y = bottom - (t - ya.lo) / (ya.hi - ya.lo) * (bottom - top);
    out += "<line x1=\"" + num(left) + "\" y1=\"" + num(y) + "\" x2=\"" + num(right) + "\" y2=\"" + num(y) +
           "\"/>\n";
  }
  out += "</g>\n";

  if (options.x_tick_labels.empty()) {
    out += "<g class=\"x-ticks\" text-anchor=\"middle\">\n";
    for (size_t i = 0; i < xa.ticks.size(); ++i)
      out += "<text x=\"" + num(px(xa.ticks[i])) + "\" y=\"" + num(bottom + 16) + "\">" +
             escape_xml(xa.labels[i]) + "</text>\n";
  } else {
    out += "<g class=\"x-ticks\" text-anchor=\"end\">\n";
    for (size_t i = 0; i < xa.ticks.size(); ++i) {
      const std::string x = num(px(xa.ticks[i]) + 4), y = num(bottom + 12);
      out += "<text x=\"" + x + "\" y=\"" + y + "\" transform=\"rotate(-40 " + x + " " + y + ")\">" +
             escape_xml(xa.labels[i]) + "</text>\n";
    }
  }
  out += "</g>\n<g class=\"y-ticks\" text-anchor=\"end\">\n";
  for (size_t i = 0; i < ya.ticks.size(); ++i) {
    const double y = bottom - (ya.ticks[i] - ya.lo) / (ya.hi - ya.lo) * (bottom - top);
    out += "<text x=\"" + num(left - 6) + "\" y=\"" + num(y + 4) + "\">" + escape_xml(ya.labels[i]) +
           "</text>\n";
  }
  out += "</g>\n";
  if (!options.x_label.empty())
    out += "<text x=\"" + num((left + right) / 2) + "\" y=\"" + num(H - 10) + "\" text-anchor=\"middle\">" +
           escape_xml(options.x_label) + "</text>\n";
  if (!options.y_label.empty()) {
    const double cy = (top + bottom) / 2;
    out += "<text x=\"16\" y=\"" + num(cy) + "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " +
           num(cy) + ")\">" + escape_xml(options.y_label) + "</text>\n";
  }

  constexpr size_t kColours = std::size(kPalette);
  out += "<g class=\"series\" fill=\"none\" stroke-width=\"1.5\" stroke-linejoin=\"round\">\n";
  for (size_t si = 0; si < series.size(); ++si) {
    const Series& s = series[si];
    std::string points;
    size_t n = 0;
    auto flush = [&] {
      if (n > 0)
        out += "<polyline stroke=\"" + std::string(kPalette[si % kColours]) + "\" points=\"" + points +
               "\"></polyline>\n";
      points.clear();
      n = 0;
    };
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!finite_point(s.x[i], s.y[i])) {
        flush();
        continue;
      }
      if (n > 0) points += ' ';
      points += num(px(s.x[i])) + "," + num(py(s.y[i]));
      ++n;
    }
    flush();
  }
  out += "</g>\n";

  out += "<g class=\"legend\">\n";
  for (size_t si = 0; si < series.size(); ++si) {
    const double y = top + 8 + 18 * static_cast<double>(si);
    out += "<line x1=\"" + num(right + 12) + "\" y1=\"" + num(y) + "\" x2=\"" + num(right + 32) + "\" y2=\"" +
           num(y) + "\" stroke=\"" + kPalette[si % kColours] + "\" stroke-width=\"3\"/>\n";
    out += "<text x=\"" + num(right + 38) + "\" y=\"" + num(y + 4) + "\">" + escape_xml(series[si].label) +
           "</text>\n";
  }
  out += "</g>\n</svg>\n";
  return out;
}

}  // namespace kiln
