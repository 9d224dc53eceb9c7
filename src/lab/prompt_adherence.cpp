#include "lab/prompt_adherence.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numbers>
#include <span>

#include "data/synthetic.h"
#include "util/error.h"

namespace kiln {

namespace {

struct Vec3 {
  double r = 0, g = 0, b = 0;
};

Vec3 vec(Rgb c) { return {static_cast<double>(c.r), static_cast<double>(c.g), static_cast<double>(c.b)}; }
Vec3 operator-(Vec3 a, Vec3 b) { return {a.r - b.r, a.g - b.g, a.b - b.b}; }
double dot(Vec3 a, Vec3 b) { return a.r * b.r + a.g * b.g + a.b * b.b; }
double distance(Vec3 a, Vec3 b) { return std::sqrt(dot(a - b, a - b)); }

// Distance from p to the segment [a, b] (a point when a == b).
double distance_to_segment(Vec3 p, Vec3 a, Vec3 b) {
  const Vec3 ab = b - a;
  const double len2 = dot(ab, ab);
  const double t = len2 > 0 ? std::clamp(dot(p - a, ab) / len2, 0.0, 1.0) : 0.0;
  return distance(p, {a.r + t * ab.r, a.g + t * ab.g, a.b + t * ab.b});
}

template <typename Named>
const Named& nearest(std::span<const Named> colours, Vec3 c) {
  const Named* best = &colours.front();
  for (const auto& named : colours)
    if (distance(vec(named.rgb), c) < distance(vec(best->rgb), c)) best = &named;
  return *best;
}

// Lower-case runs of letters.
std::vector<std::string> words_of(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalpha(c)) {
      word += static_cast<char>(std::tolower(c));
    } else if (!word.empty()) {
      words.push_back(std::move(word));
      word.clear();
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

// "circle" or "circles" -> "circle"; anything else -> "".
std::string shape_word(const std::string& word) {
  for (const auto shape : synthetic_shapes()) {
    if (word == shape || (word.size() == shape.size() + 1 && word.starts_with(shape) && word.back() == 's'))
      return std::string(shape);
  }
  return {};
}

bool is_one_of(std::span<const NamedColor> colours, const std::string& word) {
  return std::any_of(colours.begin(), colours.end(), [&](const NamedColor& c) { return c.name == word; });
}

struct Background {
  Vec3 a, b;  // a single colour when a == b, else the segment between two stripe colours
  bool striped = false;
};

// The picture's outermost pixels, clockwise from the top-left corner.
std::vector<Vec3> perimeter(const Image& image) {
  std::vector<Vec3> out;
  const int w = image.width, h = image.height;
  for (int x = 0; x < w; ++x) out.push_back(vec(image.at(x, 0)));
  for (int y = 1; y < h; ++y) out.push_back(vec(image.at(w - 1, y)));
  for (int x = w - 2; x >= 0 && h > 1; --x) out.push_back(vec(image.at(x, h - 1)));
  for (int y = h - 2; y >= 1 && w > 1; --y) out.push_back(vec(image.at(0, y)));
  return out;
}

double median(std::vector<double> v) {
  const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

Background estimate_background(const Image& image) {
  // Stripes: the two commonest of three colour clusters of the border alternate all along it,
  // each holding at least a fifth of it. Anything else touching the border (a shape, or the
  // style rim) makes at most a couple of runs, and a plain border splits into near-equal clusters.
  const std::vector<Vec3> ring = perimeter(image);
  constexpr int kClusters = 3;
  Vec3 centre[kClusters] = {ring.front(), ring.front(), ring.front()};
  for (int k = 1; k < kClusters; ++k) {  // farthest-point start
    double best = -1;
    for (const auto& p : ring) {
      double d = std::numeric_limits<double>::infinity();
      for (int j = 0; j < k; ++j) d = std::min(d, distance(p, centre[j]));
      if (d > best) {
        best = d;
        centre[k] = p;
      }
    }
  }
  std::vector<int> label(ring.size());
  int n[kClusters] = {};
  for (int iteration = 0; iteration < 8; ++iteration) {
    Vec3 sum[kClusters];
    std::fill(n, n + kClusters, 0);
    for (size_t i = 0; i < ring.size(); ++i) {
      int best = 0;
      for (int k = 1; k < kClusters; ++k)
        if (distance(ring[i], centre[k]) < distance(ring[i], centre[best])) best = k;
      label[i] = best;
      sum[best] = {sum[best].r + ring[i].r, sum[best].g + ring[i].g, sum[best].b + ring[i].b};
      ++n[best];
    }
    for (int k = 0; k < kClusters; ++k)
      if (n[k] > 0) centre[k] = {sum[k].r / n[k], sum[k].g / n[k], sum[k].b / n[k]};
  }
  int first = 0, second = 1;
  if (n[second] > n[first]) std::swap(first, second);
  if (n[2] > n[first]) {
    second = first;
    first = 2;
  } else if (n[2] > n[second]) {
    second = 2;
  }
  const double share = static_cast<double>(n[second]) / static_cast<double>(ring.size());
  if (share >= 0.2 && distance(centre[first], centre[second]) >= kMinContrast) {
    std::vector<int> sequence;  // the border's labels, the third cluster left out
    for (const int l : label)
      if (l == first || l == second) sequence.push_back(l);
    int changes = 0;  // label changes that last at least two pixels
    for (size_t i = 0; i < sequence.size(); ++i) {
      const size_t prev = (i + sequence.size() - 1) % sequence.size(), next = (i + 1) % sequence.size();
      if (sequence[i] != sequence[prev] && sequence[i] == sequence[next]) ++changes;
    }
    if (changes >= 6) return {centre[first], centre[second], true};
  }
  // A plain background: the per-channel median of a ring 1/32 of the side wide.
  const int width = std::max(1, std::min(image.width, image.height) / 32);
  std::vector<double> channel[3];
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      if (x >= width && x < image.width - width && y >= width && y < image.height - width) continue;
      const Rgb c = image.at(x, y);
      channel[0].push_back(c.r);
      channel[1].push_back(c.g);
      channel[2].push_back(c.b);
    }
  }
  const Vec3 plain{median(channel[0]), median(channel[1]), median(channel[2])};
  return {plain, plain, false};
}

// The largest 4-connected region of `mask` (row-major, width w), as pixel indices.
std::vector<int> largest_region(const std::vector<char>& mask, int w, int h) {
  std::vector<char> seen(mask.size(), 0);
  std::vector<int> best, region, stack;
  for (int start = 0; start < w * h; ++start) {
    if (!mask[start] || seen[start]) continue;
    region.clear();
    stack.assign(1, start);
    seen[start] = 1;
    while (!stack.empty()) {
      const int i = stack.back();
      stack.pop_back();
      region.push_back(i);
      const int x = i % w, y = i / w;
      const int neighbours[4][2] = {{x - 1, y}, {x + 1, y}, {x, y - 1}, {x, y + 1}};
      for (const auto& [nx, ny] : neighbours) {
        if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
        const int j = ny * w + nx;
        if (mask[j] && !seen[j]) {
          seen[j] = 1;
          stack.push_back(j);
        }
      }
    }
    if (region.size() > best.size()) best = region;
  }
  return best;
}

// The share of the picture that `mask` marks outside `region` grown by `band` pixels (Chebyshev).
double stray_fraction(const std::vector<char>& mask, const std::vector<char>& region, int w, int h, int band) {
  int stray = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      if (!mask[y * w + x]) continue;
      bool near_region = false;
      for (int dy = -band; dy <= band && !near_region; ++dy)
        for (int dx = -band; dx <= band && !near_region; ++dx) {
          const int nx = x + dx, ny = y + dy;
          near_region = nx >= 0 && ny >= 0 && nx < w && ny < h && region[ny * w + nx];
        }
      stray += !near_region;
    }
  return static_cast<double>(stray) / (static_cast<double>(w) * h);
}

}  // namespace

std::optional<WorldPrompt> parse_world_prompt(std::string_view prompt) {
  const auto words = words_of(prompt);
  std::optional<WorldPrompt> out;
  for (size_t i = 1; i < words.size() && !out; ++i) {
    const std::string shape = shape_word(words[i]);
    if (shape.empty() || !is_one_of(synthetic_shape_colors(), words[i - 1])) continue;
    // "black and white circles" names two colours for one shape: no single answer to check.
    if (i >= 3 && (words[i - 2] == "and" || words[i - 2] == "or") &&
        is_one_of(synthetic_shape_colors(), words[i - 3]))
      return std::nullopt;
    out = WorldPrompt{words[i - 1], shape, {}};
  }
  if (!out) return std::nullopt;
  for (size_t i = 1; i < words.size(); ++i) {
    if (words[i] != "background") continue;
    const std::string bg = words[i - 1] == "gray" ? "grey" : words[i - 1];
    if (is_one_of(synthetic_backgrounds(), bg)) {
      out->background = bg;
      break;
    }
  }
  return out;
}

ShapeReading read_shape(const Image& image, Rgb rim_colour) {
  if (image.empty() || image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3)
    throw Error("read_shape: an empty image or one whose pixels do not match its size");
  const int w = image.width, h = image.height;
  const Background bg = estimate_background(image);

  std::vector<double> dist(static_cast<size_t>(w) * h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) dist[y * w + x] = distance_to_segment(vec(image.at(x, y)), bg.a, bg.b);
  std::vector<double> sorted = dist;
  const auto p98 =
      sorted.begin() + static_cast<std::ptrdiff_t>(0.98 * static_cast<double>(sorted.size() - 1));
  std::nth_element(sorted.begin(), p98, sorted.end());

  ShapeReading reading;
  reading.contrast = *p98;
  reading.background = bg.striped ? "striped" : std::string(nearest(synthetic_backgrounds(), bg.a).name);
  const auto shape_colors = synthetic_shape_colors();
  const auto is_rim = [&](Vec3 c) {
    return distance(c, vec(rim_colour)) < distance(c, vec(nearest(shape_colors, c).rgb));
  };
  int rim = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const Vec3 c = vec(image.at(x, y));
      rim += distance(c, vec(rim_colour)) < kMaxRimDistance && is_rim(c);
    }
  reading.rim_fraction = static_cast<double>(rim) / static_cast<double>(dist.size());
  if (reading.contrast < kMinContrast) return reading;  // found stays false

  std::vector<char> mask(dist.size());
  for (size_t i = 0; i < dist.size(); ++i) mask[i] = dist[i] > reading.contrast / 2;
  const std::vector<int> region = largest_region(mask, w, h);
  reading.foreground_fraction = static_cast<double>(region.size()) / static_cast<double>(dist.size());
  if (reading.foreground_fraction < kMinShapeFraction || reading.foreground_fraction > kMaxShapeFraction)
    return reading;

  int x0 = w, y0 = h, x1 = -1, y1 = -1;
  std::vector<char> in_region(dist.size(), 0);
  for (const int i : region) {
    in_region[i] = 1;
    x0 = std::min(x0, i % w);
    x1 = std::max(x1, i % w);
    y0 = std::min(y0, i / w);
    y1 = std::max(y1, i / w);
  }
  reading.fill_ratio = static_cast<double>(region.size()) / ((x1 - x0 + 1.0) * (y1 - y0 + 1.0));
  struct Kind {
    std::string_view name;
    double fill;
  };
  const std::array<Kind, 3> kinds{{{"circle", std::numbers::pi / 4}, {"square", 1.0}, {"triangle", 0.5}}};
  const Kind* kind = &kinds[0];
  for (const auto& k : kinds)
    if (std::abs(k.fill - reading.fill_ratio) < std::abs(kind->fill - reading.fill_ratio)) kind = &k;
  reading.shape = kind->name;

  // The colour of the interior, away from blurred edges and the style set's rim.
  const int erode = std::max(1, std::min(w, h) / 32);

  Vec3 sum, sum_all;
  int n = 0;
  for (const int i : region) {
    const int x = i % w, y = i / w;
    const Vec3 c = vec(image.at(x, y));
    sum_all = {sum_all.r + c.r, sum_all.g + c.g, sum_all.b + c.b};
    bool interior = true;
    for (int dy = -erode; dy <= erode && interior; ++dy)
      for (int dx = -erode; dx <= erode && interior; ++dx) {
        const int nx = x + dx, ny = y + dy;
        interior = nx >= 0 && ny >= 0 && nx < w && ny < h && in_region[ny * w + nx];
      }
    if (!interior || is_rim(c)) continue;
    sum = {sum.r + c.r, sum.g + c.g, sum.b + c.b};
    ++n;
  }
  const double count = n > 0 ? n : static_cast<double>(region.size());
  const Vec3 total = n > 0 ? sum : sum_all;
  reading.colour = nearest(shape_colors, Vec3{total.r / count, total.g / count, total.b / count}).name;
  reading.stray_fraction = stray_fraction(mask, in_region, w, h, erode);
  reading.found = true;
  return reading;
}

bool is_clean(const ShapeReading& reading) {
  return reading.found && reading.stray_fraction <= kMaxStrayFraction;
}

bool shows_style(const ShapeReading& reading) {
  return reading.background == "striped" || reading.rim_fraction >= kMinRimFraction;
}

PromptAdherence prompt_adherence(const std::vector<std::pair<WorldPrompt, Image>>& cells, Rgb rim) {
  PromptAdherence out;
  int colour = 0, shape = 0, both = 0, background = 0, clean = 0, correct = 0, style_free = 0;
  for (const auto& [prompt, image] : cells) {
    const ShapeReading reading = read_shape(image, rim);
    const bool colour_ok = reading.found && reading.colour == prompt.colour;
    const bool shape_ok = reading.found && reading.shape == prompt.shape;
    const bool background_ok =
        prompt.background.empty() ? reading.background != "striped" : reading.background == prompt.background;
    colour += colour_ok;
    shape += shape_ok;
    both += colour_ok && shape_ok;
    background += background_ok;
    clean += is_clean(reading);
    correct += colour_ok && shape_ok && background_ok && is_clean(reading);
    style_free += !shows_style(reading);
  }
  out.cells = static_cast<int>(cells.size());
  if (out.cells > 0) {
    const auto fraction = [&](int n) { return static_cast<double>(n) / out.cells; };
    out.colour = fraction(colour);
    out.shape = fraction(shape);
    out.both = fraction(both);
    out.background = fraction(background);
    out.clean = fraction(clean);
    out.correct = fraction(correct);
    out.style_free = fraction(style_free);
  }
  return out;
}

}  // namespace kiln
