#include "lab/run_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <tuple>
#include <vector>

#include "lab/svg_plot.h"
#include "logging/metrics_log.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;

std::string base64_encode(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16 |
                       static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                       static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 2]));
    out += kAlphabet[v >> 18 & 63];
    out += kAlphabet[v >> 12 & 63];
    out += kAlphabet[v >> 6 & 63];
    out += kAlphabet[v & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (rest == 2) v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += kAlphabet[v >> 18 & 63];
    out += kAlphabet[v >> 12 & 63];
    out += rest == 2 ? kAlphabet[v >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path, "cannot be read");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}


std::string human_size(uintmax_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, kUnits[unit]);
}

std::string format_number(double v) {
  if (std::isnan(v)) return "–";
  return fmt::format("{:.4g}", v);
}

// One logged value: where it was logged (step, epoch when the line had one) and what it was.
struct Point {
  double step, epoch, value;
};

struct Metrics {
  std::map<std::string, std::vector<Point>> tags;
  int64_t max_step = -1, max_epoch = -1, epochs_done = -1;
  double first_time = kNaN, last_time = kNaN;
};

Metrics load_metrics(const fs::path& path) {
  Metrics m;
  if (!fs::exists(path)) return m;
  for (const auto& line : read_metrics_jsonl(path)) {
    if (!line.is_object()) continue;
    const double step = line.contains("step") && line["step"].is_number() ? line["step"].get<double>() : kNaN;
    const double epoch =
        line.contains("epoch") && line["epoch"].is_number() ? line["epoch"].get<double>() : kNaN;
    if (!std::isnan(step)) m.max_step = std::max(m.max_step, static_cast<int64_t>(step));
    if (!std::isnan(epoch)) m.max_epoch = std::max(m.max_epoch, static_cast<int64_t>(epoch));
    if (line.contains("time") && line["time"].is_number()) {
      const double t = line["time"].get<double>();
      if (std::isnan(m.first_time) || t < m.first_time) m.first_time = t;
      if (std::isnan(m.last_time) || t > m.last_time) m.last_time = t;
    }
    for (const auto& [key, value] : line.items()) {
      if (key == "step" || key == "epoch" || key == "time") continue;
      // null is how the log spells NaN/inf: keep the point so the plot shows the gap.
      const double v = value.is_number() ? value.get<double>() : kNaN;
      m.tags[key].push_back({step, epoch, v});
      // loss/epoch is logged with the number of epochs done, the most honest count of progress.
      if (key == "loss/epoch" && !std::isnan(epoch))
        m.epochs_done = std::max(m.epochs_done, static_cast<int64_t>(epoch));
    }
  }
  return m;
}

enum class Axis { step, epoch };

// Long runs log hundreds of thousands of steps; past this many points a plot keeps every k-th
// one so the page stays light enough to open.
constexpr size_t kMaxPoints = 4000;

std::optional<Series> series_for(const Metrics& m, const std::string& tag, const std::string& label,
                                 Axis axis) {
  auto it = m.tags.find(tag);
  if (it == m.tags.end() || it->second.empty()) return std::nullopt;
  const auto& points = it->second;
  const size_t stride = (points.size() + kMaxPoints - 1) / kMaxPoints;
  Series s;
  s.label = stride > 1 ? fmt::format("{} (every {}th point)", label, stride) : label;
  for (size_t i = 0; i < points.size(); i += stride) {
    const double x = axis == Axis::step ? points[i].step : points[i].epoch;
    if (std::isnan(x)) continue;
    s.x.push_back(x);
    s.y.push_back(points[i].value);
  }
  if (s.x.empty()) return std::nullopt;
  return s;
}

struct PlotSpec {
  std::string title, x_label, y_label;
  std::vector<std::tuple<std::string, std::string, Axis>> tags;  // tag, legend label, x axis
  bool only_when_present = false;
};


std::string plot(const Metrics& m, const PlotSpec& spec) {
  std::vector<Series> series;
  for (const auto& [tag, label, axis] : spec.tags) {
    if (auto s = series_for(m, tag, label, axis)) series.push_back(std::move(*s));
  }
  if (series.empty() && spec.only_when_present) return {};
  PlotOptions options;
  options.title = spec.title;
  options.x_label = spec.x_label;
  options.y_label = spec.y_label;
  options.width = 760;
  options.height = 340;
  return inline_svg(line_plot_svg(series, options));
}

// The epoch number in a checkpoint name such as "e0005" or "e0005-ema", for ordering.
std::optional<int64_t> epoch_of(const std::string& name) {
  if (name.size() < 2 || name[0] != 'e' || !std::isdigit(static_cast<unsigned char>(name[1])))
    return std::nullopt;
  int64_t n = 0;
  for (size_t i = 1; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i)
    n = n * 10 + (name[i] - '0');
  return n;
}

bool checkpoint_order(const std::string& a, const std::string& b) {
  const auto ea = epoch_of(a), eb = epoch_of(b);
  if (ea && eb && *ea != *eb) return *ea < *eb;
  if (ea.has_value() != eb.has_value()) return ea.has_value();  // unnumbered names go last
  return a < b;
}

std::vector<fs::path> sorted_entries(const fs::path& dir, bool directories) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (directories ? entry.is_directory() : entry.is_regular_file()) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) {
    return checkpoint_order(a.filename().string(), b.filename().string());
  });
  return out;
}

std::string checkpoints_section(const fs::path& run_dir) {
  const auto files = sorted_entries(run_dir / "checkpoints", false);
  if (files.empty()) return "<p>No checkpoints yet.</p>\n";
  std::string out = "<table><tr><th>file</th><th>size</th></tr>\n";
  for (const auto& f : files) {
    out += fmt::format("<tr><td><code>{}</code></td><td class=\"num\">{}</td></tr>\n",
                       escape_xml(f.filename().string()), human_size(fs::file_size(f)));
  }
  return out + "</table>\n";
}

std::string samples_section(const fs::path& run_dir) {
  const auto checkpoints = sorted_entries(run_dir / "samples", true);
  std::set<std::string> names;
  for (const auto& dir : checkpoints) {
    for (const auto& f : sorted_entries(dir, false)) {
      if (f.extension() == ".png") names.insert(f.filename().string());
    }
  }
  if (names.empty()) return "<p>No samples yet.</p>\n";
  std::string out = "<div class=\"scroll\"><table class=\"samples\"><tr><th>checkpoint</th>";
  for (const auto& n : names) out += fmt::format("<th>{}</th>", escape_xml(n));
  out += "</tr>\n";
  for (const auto& dir : checkpoints) {
    out += fmt::format("<tr><th>{}</th>", escape_xml(dir.filename().string()));
    for (const auto& n : names) {
      const fs::path f = dir / n;
      if (fs::is_regular_file(f)) {
        out += fmt::format("<td><img alt=\"{0}\" title=\"{0}\" src=\"{1}\"></td>",
                           escape_xml(dir.filename().string() + "/" + n), data_uri(f, "image/png"));
      } else {
        out += "<td class=\"missing\">–</td>";
      }
    }
    out += "</tr>\n";
  }
  return out + "</table></div>\n";
}

std::string json_cell(const nlohmann::json& v) {
  if (v.is_number()) return format_number(v.get<double>());
  if (v.is_null()) return "–";
  if (v.is_string()) return escape_xml(v.get<std::string>());
  return escape_xml(v.dump());
}

// The drift table of diagnose.json: an array of objects (one row each) or an object of rows.
// Its columns are the union of the rows' keys in first-seen order, so the table follows whatever
// `kiln diagnose` records without this file knowing its fields.
std::string groups_table(const nlohmann::json& groups) {
  std::vector<std::pair<std::string, const nlohmann::json*>> rows;
  if (groups.is_array()) {
    for (const auto& g : groups) rows.emplace_back("", &g);
  } else if (groups.is_object()) {
    for (const auto& [k, g] : groups.items()) rows.emplace_back(k, &g);
  }
  if (rows.empty()) return {};
  const bool named_rows = groups.is_object();
  std::vector<std::string> columns;
  for (const auto& [name, g] : rows) {
    if (!g->is_object()) continue;
    for (const auto& [k, unused] : g->items()) {
      if (std::find(columns.begin(), columns.end(), k) == columns.end()) columns.push_back(k);
    }
  }
  std::string out = "<h3>Weight drift by group</h3>\n<table><tr>";
  if (named_rows) out += "<th>group</th>";
  for (const auto& c : columns) out += fmt::format("<th>{}</th>", escape_xml(c));
  if (columns.empty()) out += "<th>value</th>";
  out += "</tr>\n";
  for (const auto& [name, g] : rows) {
    out += "<tr>";
    if (named_rows) out += fmt::format("<th>{}</th>", escape_xml(name));
    if (columns.empty() || !g->is_object()) {
      out += fmt::format("<td>{}</td>", json_cell(*g));
    } else {
      for (const auto& c : columns) {
        const bool number = g->contains(c) && (*g)[c].is_number();
        out += fmt::format("<td{}>{}</td>", number ? " class=\"num\"" : "",
                           g->contains(c) ? json_cell((*g)[c]) : "");
      }
    }
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

// `kiln diagnose` keeps the drift per checkpoint ({"label", "drift": [{"group", "relative_drift"}]});
// one table with a row per group and a column per checkpoint shows where and when it moved.
std::string drift_by_checkpoint_table(const nlohmann::json& checkpoints) {
  std::vector<std::string> labels, groups;
  std::map<std::pair<std::string, std::string>, double> drift;
  for (const auto& c : checkpoints) {
    if (!c.is_object() || !c.contains("drift") || !c["drift"].is_array()) continue;
    const std::string label =
        c.contains("label") ? json_cell(c["label"]) : fmt::format("#{}", labels.size() + 1);
    labels.push_back(label);
    for (const auto& g : c["drift"]) {
      if (!g.is_object() || !g.contains("group")) continue;
      const std::string group = json_cell(g["group"]);
      if (std::find(groups.begin(), groups.end(), group) == groups.end()) groups.push_back(group);
      const auto& v = g.contains("relative_drift") ? g["relative_drift"] : nlohmann::json();
      drift[{group, label}] = v.is_number() ? v.get<double>() : kNaN;
    }
  }
  if (groups.empty()) return {};
  std::string out =
      "<h3>Relative weight drift ‖W−W₀‖/‖W₀‖ by group</h3>\n<div class=\"scroll\"><table><tr><th>group</th>";
  for (const auto& l : labels) out += fmt::format("<th>{}</th>", l);
  out += "</tr>\n";
  for (const auto& g : groups) {
    out += fmt::format("<tr><th>{}</th>", g);
    for (const auto& l : labels) {
      auto it = drift.find({g, l});
      out += fmt::format("<td class=\"num\">{}</td>", it == drift.end() ? "" : format_number(it->second));
    }
    out += "</tr>\n";
  }
  return out + "</table></div>\n";
}

// Prompt adherence per model (diagnose.json's "images.prompt_adherence" of the base, each checkpoint
// and the swap test's two mixes), when it was measured.
std::string adherence_table(const nlohmann::json& doc) {
  std::vector<std::pair<std::string, const nlohmann::json*>> rows;
  const auto add = [&rows](const std::string& name, const nlohmann::json& stats) {
    if (stats.is_object() && stats.contains("prompt_adherence") && stats["prompt_adherence"].is_object())
      rows.emplace_back(name, &stats["prompt_adherence"]);
  };
  if (doc.contains("base")) add("base", doc["base"]);
  if (doc.contains("checkpoints") && doc["checkpoints"].is_array()) {
    for (const auto& c : doc["checkpoints"]) {
      if (c.is_object() && c.contains("images"))
        add(c.contains("label") ? json_cell(c["label"]) : "checkpoint", c["images"]);
    }
  }
  if (doc.contains("swap_test") && doc["swap_test"].is_object()) {
    const auto& swap = doc["swap_test"];
    if (swap.contains("trained_text_encoder_base_unet"))
      add("trained text encoder + base UNet", swap["trained_text_encoder_base_unet"]);
    if (swap.contains("trained_unet_base_text_encoder"))
      add("base text encoder + trained UNet", swap["trained_unet_base_text_encoder"]);
  }
  if (rows.empty()) return {};
  std::string out =
      "<h3>Prompt adherence (synthetic world: the asked colour and shape)</h3>\n<table><tr><th>model</th>"
      "<th>colour</th><th>shape</th><th>both</th><th>cells</th></tr>\n";
  for (const auto& [name, a] : rows) {
    out += fmt::format("<tr><th>{}</th>", name);
    for (const char* key : {"colour", "shape", "both", "cells"})
      out += fmt::format("<td class=\"num\">{}</td>", a->contains(key) ? json_cell((*a)[key]) : "");
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

// Every SVG plot `kiln diagnose` wrote, inline: the known ones in reading order, then any others
// by name.
std::string diagnosis_plots(const fs::path& dir) {
  static constexpr const char* kOrder[] = {"image_statistics.svg", "prompt_adherence.svg", "weight_drift.svg",
                                           "weight_drift_blocks.svg"};
  std::vector<fs::path> svgs;
  for (const char* name : kOrder)
    if (fs::is_regular_file(dir / name)) svgs.push_back(dir / name);
  std::vector<fs::path> others;
  std::error_code ec;
  if (fs::is_directory(dir, ec)) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      const auto name = entry.path().filename().string();
      if (entry.is_regular_file() && entry.path().extension() == ".svg" &&
          std::none_of(std::begin(kOrder), std::end(kOrder), [&](const char* k) { return name == k; }))
        others.push_back(entry.path());
    }
  }
  std::sort(others.begin(), others.end());
  svgs.insert(svgs.end(), others.begin(), others.end());
  std::string out;
  for (const auto& svg : svgs) {
    const std::string text = read_file(svg);
    if (text.find("<svg") == std::string::npos) continue;  // not a plot; leave it out
    out += inline_svg(text);
  }
  return out;
}

std::string diagnosis_section(const fs::path& run_dir) {
  const fs::path path = run_dir / "diagnose" / "diagnose.json";
  const std::string hint = fmt::format("<code>kiln diagnose {}</code>", escape_xml(run_dir.string()));
  if (!fs::is_regular_file(path)) return fmt::format("<p>No diagnosis yet: {}</p>\n", hint);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    // A broken optional file should not cost the rest of the report.
    return fmt::format("<p class=\"warn\">diagnose/diagnose.json could not be read ({}); rerun {}</p>\n",
                       escape_xml(e.what()), hint);
  }
  std::string out;
  if (doc.contains("verdicts") && doc["verdicts"].is_array()) {
    out += "<ul class=\"verdicts\">\n";
    for (const auto& v : doc["verdicts"]) out += fmt::format("<li>{}</li>\n", json_cell(v));
    out += "</ul>\n";
  }
  if (doc.contains("groups")) {
    out += groups_table(doc["groups"]);
  } else if (doc.contains("checkpoints") && doc["checkpoints"].is_array()) {
    out += drift_by_checkpoint_table(doc["checkpoints"]);
  }
  out += adherence_table(doc);
  out += diagnosis_plots(run_dir / "diagnose");
  if (out.empty()) out = "<p>The diagnosis holds no verdicts or drift table.</p>\n";
  return out;
}

std::string summary_section(const fs::path& run_dir, const Metrics& m) {
  std::string out = "<table class=\"summary\">\n";
  out += fmt::format("<tr><th>run folder</th><td><code>{}</code></td></tr>\n",
                     escape_xml(fs::absolute(run_dir).string()));
  if (m.max_step < 0) {
    out += "<tr><th>progress</th><td>no metrics.jsonl yet</td></tr>\n";
  } else {
    const std::string epochs = m.epochs_done >= 0 ? fmt::format("{}", m.epochs_done)
                               : m.max_epoch >= 0 ? fmt::format("0 (epoch {} in progress)", m.max_epoch)
                                                  : "–";
    out += fmt::format("<tr><th>epochs done</th><td>{}</td></tr>\n", epochs);
    out += fmt::format("<tr><th>optimizer steps done</th><td>{}</td></tr>\n", m.max_step);
    if (!std::isnan(m.first_time) && m.last_time > m.first_time) {
      const auto seconds = static_cast<int64_t>(m.last_time - m.first_time);
      out += fmt::format("<tr><th>logged time span</th><td>{}h {:02}m {:02}s</td></tr>\n", seconds / 3600,
                         seconds / 60 % 60, seconds % 60);
    }
    if (auto it = m.tags.find("loss/epoch"); it != m.tags.end() && !it->second.empty())
      out += fmt::format("<tr><th>last epoch loss</th><td>{}</td></tr>\n",
                         format_number(it->second.back().value));
    if (auto it = m.tags.find("loss/val"); it != m.tags.end() && !it->second.empty())
      out += fmt::format("<tr><th>last validation loss</th><td>{}</td></tr>\n",
                         format_number(it->second.back().value));
  }
  return out + "</table>\n";
}

constexpr const char* kStyle = R"(
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 4px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.missing { color: #999; text-align: center; vertical-align: middle; }
figure { margin: 12px 0; }
figure svg { max-width: 100%; height: auto; }
.samples img { width: 192px; height: auto; display: block; image-rendering: auto; }
.scroll { overflow-x: auto; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 12px; overflow-x: auto; font-size: 0.9em; }
.media img { max-width: 100%; height: auto; }
.warn { color: #a33; }
.note { color: #666; font-size: 0.9em; }
)";

}  // namespace

std::string data_uri(const fs::path& path, std::string_view mime) {
  return fmt::format("data:{};base64,{}", mime, base64_encode(read_file(path)));
}

// Inline SVG in HTML needs no namespace (nor an XML declaration); dropping it leaves the page free of
// any URL, which is what the offline check (no "http") looks for.
std::string inline_svg(std::string svg) {
  static constexpr std::string_view kXmlns = " xmlns=\"http://www.w3.org/2000/svg\"";
  if (const size_t pos = svg.find(kXmlns); pos != std::string::npos) svg.erase(pos, kXmlns.size());
  if (const size_t end = svg.find("?>"); svg.starts_with("<?xml") && end != std::string::npos)
    svg.erase(0, svg.find_first_not_of(" \t\r\n", end + 2));
  return "<figure>" + svg + "</figure>\n";
}

std::string run_report_html(const fs::path& run_dir) {
  const fs::path toml = run_dir / "run.toml";
  if (!fs::is_regular_file(toml)) throw_file_error(run_dir, "not a run folder (no run.toml)");
  const Metrics m = load_metrics(run_dir / "metrics.jsonl");
  std::string name = fs::absolute(run_dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(run_dir).lexically_normal().parent_path().filename().string();

  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  html += fmt::format("<title>kiln run report: {}</title>\n<style>{}</style>\n</head>\n<body>\n",
                      escape_xml(name), kStyle);
  html += fmt::format("<h1>kiln run report: {}</h1>\n", escape_xml(name));

  html += "<h2>Summary</h2>\n" + summary_section(run_dir, m);
  html += "<h3>Checkpoints</h3>\n" + checkpoints_section(run_dir);

  const auto te = [](const std::string& prefix, Axis a) {
    return std::tuple{prefix + "/text_encoder", std::string("text encoder"), a};
  };
  const auto unet = [](const std::string& prefix, Axis a) {
    return std::tuple{prefix + "/unet", std::string("UNet"), a};
  };
  const std::vector<PlotSpec> plots = {
      {"Training loss",
       "optimizer step",
       "loss",
       {{"loss/step", "loss per step", Axis::step},
        {"loss/epoch", "epoch mean (at the epoch's last step)", Axis::step}}},
      {"Validation and stabilised loss",
       "epochs done",
       "loss",
       {{"loss/val", "validation", Axis::epoch},
        {"loss/stabilize-train", "stabilised training", Axis::epoch},
        {"loss/epoch", "training epoch mean", Axis::epoch}}},
      {"Learning rate", "optimizer step", "learning rate", {te("lr", Axis::step), unet("lr", Axis::step)}},
      {"Adaptive step size d", "optimizer step", "d", {te("d", Axis::step), unet("d", Axis::step)}, true},
      {"Gradient norm (before clipping)",
       "optimizer step",
       "gradient norm",
       {te("grad_norm", Axis::step), unet("grad_norm", Axis::step)},
       true},
      {"Throughput",
       "optimizer step",
       "images / second",
       {{"performance/images_per_second", "images per second", Axis::step}}},
  };
  html += "<h2>Metrics</h2>\n";
  if (m.max_step < 0)
    html += "<p class=\"note\">No metrics.jsonl in the run folder: the plots are empty.</p>\n";
  for (const auto& spec : plots) html += plot(m, spec);

  html += "<h2>Samples</h2>\n" + samples_section(run_dir);

  const fs::path grid = run_dir / "grid" / "grid.png", gif = run_dir / "grid" / "progress.gif";
  if (fs::is_regular_file(grid) || fs::is_regular_file(gif)) {
    html += "<h2>Grid</h2>\n<div class=\"media\">\n";
    if (fs::is_regular_file(grid))
      html += fmt::format("<p><img alt=\"grid\" src=\"{}\"></p>\n", data_uri(grid, "image/png"));
    if (fs::is_regular_file(gif))
      html += fmt::format("<p><img alt=\"progress through the checkpoints\" src=\"{}\"></p>\n",
                          data_uri(gif, "image/gif"));
    html += "</div>\n";
  }

  html += "<h2>Diagnosis</h2>\n" + diagnosis_section(run_dir);
  html += "<h2>Settings (run.toml)</h2>\n<pre>" + escape_xml(read_file(toml)) + "</pre>\n";
  html += "</body>\n</html>\n";
  return html;
}

fs::path write_run_report(const fs::path& run_dir) {
  const std::string html = run_report_html(run_dir);
  const fs::path out = run_dir / "report.html";
  write_text_atomically(out, html);
  return out;
}

}  // namespace kiln
