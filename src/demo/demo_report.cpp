#include "demo/demo_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "data/image_file.h"
#include "image/font.h"
#include "image/grid.h"
#include "image/png.h"
#include "lab/run_report.h"
#include "lab/svg_plot.h"
#include "logging/metrics_log.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// An <img> with the file inline, or a note when the file is missing.
std::string inline_image(const fs::path& path, const std::string& alt, const std::string& mime) {
  if (!fs::is_regular_file(path)) return fmt::format("<p class=\"warn\">missing: {}</p>\n", escape_xml(path.string()));
  return fmt::format("<img src=\"{}\" alt=\"{}\">\n", data_uri(path, mime), escape_xml(alt));
}

// The first `n` pictures of a folder, zoomed, as one row.
std::vector<Image> first_pictures(const fs::path& dir, size_t n, int zoom) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".png") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<Image> out;
  for (size_t i = 0; i < std::min(n, files.size()); ++i) out.push_back(scale_nearest(load_image(files[i]), zoom));
  return out;
}

fs::path write_world_overview(const DemoWorld& world, const fs::path& out_dir) {
  const size_t n = 8;
  auto plain = first_pictures(world.plain, n, 2), style = first_pictures(world.style, n, 2);
  const size_t columns = std::min(plain.size(), style.size());
  plain.resize(columns);
  style.resize(columns);
  GridLayout layout;
  layout.row_labels = {"plain world", "style set"};
  const fs::path path = out_dir / "world.png";
  write_png(path, make_grid({plain, style}, layout, Font::load_default()));
  return path;
}

// One metric of several runs as lines over the epoch.
std::string metric_plot(const DemoResult& result, const std::vector<std::string>& runs, const std::string& tag,
                        const std::string& title, const std::string& y_label) {
  std::vector<Series> series;
  for (const auto& run : result.runs) {
    if (std::find(runs.begin(), runs.end(), run.experiment.name) == runs.end()) continue;
    const fs::path log = run.run_dir / "metrics.jsonl";
    if (!fs::is_regular_file(log)) continue;
    Series s;
    s.label = run.experiment.name;
    for (const auto& line : read_metrics_jsonl(log)) {
      if (!line.contains(tag) || !line.contains("epoch") || !line[tag].is_number()) continue;
      s.x.push_back(line["epoch"].get<double>());
      s.y.push_back(line[tag].get<double>());
    }
    if (!s.x.empty()) series.push_back(std::move(s));
  }
  if (series.empty()) return "<p class=\"note\">no " + escape_xml(tag) + " values logged</p>\n";
  return inline_svg(line_plot_svg(series, {title, "epoch", y_label, 760, 340}));
}

// Which parts the run's verdicts call over-trained, and from which checkpoint on.
std::string state_of(const DemoRun& run) {
  std::string out;
  for (const char* part : {"UNet", "text encoder"}) {
    const std::string phrase = std::string(part) + " over-trained";
    for (size_t i = 0; i < run.checkpoint_verdicts.size(); ++i) {
      if (run.checkpoint_verdicts[i].find(phrase) == std::string::npos) continue;
      out += fmt::format("<span class=\"bad\">{} from {}</span><br>", phrase,
                         escape_xml(i < run.labels.size() ? run.labels[i] : std::to_string(i + 1)));
      break;
    }
  }
  return out.empty() ? "<span class=\"good\">healthy</span>" : out;
}

std::string rate(double lr) { return lr > 0 ? fmt::format("{:g}", lr) : "frozen"; }

constexpr const char* kStyle = R"(
body { font-family: system-ui, "DejaVu Sans", sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px;
       color: #222; background: #fff; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
img { max-width: 100%; height: auto; image-rendering: pixelated; }
figure { margin: 12px 0; } figure svg { max-width: 100%; height: auto; }
.media { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.verdicts li { margin: 2px 0; }
.note { color: #666; font-size: 0.9em; }
.warn { color: #a33; }
.bad { color: #b00; font-weight: bold; } .good { color: #070; font-weight: bold; }
)";

}  // namespace

fs::path write_demo_report(const DemoResult& result, const DemoWorld& world, const fs::path& out_dir) {
  const fs::path overview = write_world_overview(world, out_dir);
  std::string html = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kiln demo</title>\n";
  html += std::string("<style>") + kStyle + "</style></head><body>\n<h1>kiln demo: telling a burnt fine-tune from a good one</h1>\n";
  html += fmt::format(
      "<p>A tiny SD-shaped model (base: <code>{}</code>, trained by kiln in a synthetic world) fine-tuned on a "
      "{}-picture style set with the activation phrase <b>{}</b>, {} ways. Everything below was made by kiln in "
      "{:.0f} s. Each run's own report (loss curves, learning rates, samples, drift tables, settings) is linked.</p>\n",
      escape_xml(result.base.string()), world.size.style_count, escape_xml(std::string(kDemoActivationPhrase)),
      result.runs.size(), result.seconds);
  html += "<h2>The world</h2>\n<p>Top: what the base model learnt from (one coloured shape, plain background, "
          "a caption naming both). Bottom: the style set — stripes and an orange rim, captioned only with the "
          "activation phrase and the subject.</p>\n";
  html += inline_image(overview, "the synthetic world", "image/png");
  const auto& drawing = result.base_drawing;
  html += fmt::format(
      "<h2>The base model</h2>\n<p>A burn can only show on a base that draws its world. Every world prompt "
      "(colour × shape × background, {} pictures at seed 101, a seed no experiment uses) drawn by the base "
      "and read back: <b>{:.0f}% as asked</b> (colour {:.0f}%, shape {:.0f}%, background {:.0f}%, drawn cleanly "
      "{:.0f}%).</p>\n",
      drawing.cells, 100 * drawing.correct, 100 * drawing.colour, 100 * drawing.shape, 100 * drawing.background,
      100 * drawing.clean);
  html += "<details><summary>every world prompt, drawn by the base</summary>" +
          inline_image(result.base_sheet, "the base model's world", "image/png") + "</details>\n";

  html += "<h2>Verdicts</h2>\n<p>What <code>kiln diagnose</code> says about each run, judged on the prompts without "
          "the activation phrase (where the style must not show): which part it first calls over-trained and "
          "when (each sign blamed on the part the swap test finds causing it), the last checkpoint's verdict, and the "
          "checkpoint to keep: the last before the first burn sign. Every checkpoint's verdict is in the run's "
          "section below.</p>\n"
          "<table><tr><th>run</th><th>text encoder</th><th>UNet</th><th>state</th><th>last checkpoint</th>"
          "<th>keep</th><th>time</th></tr>\n";
  for (const auto& run : result.runs) {
    html += fmt::format(
        "<tr><td><a href=\"#{0}\">{0}</a>{1}</td><td>{2}</td><td>{3}</td><td class=\"state\">{4}</td><td>{5}</td>"
        "<td>{6}</td><td>{7:.0f} s</td></tr>\n",
        escape_xml(run.experiment.name), run.experiment.lora ? " (LoRA)" : "", rate(run.experiment.text_encoder_lr),
        rate(run.experiment.unet_lr), state_of(run), escape_xml(run.final_verdict),
        run.recommended.empty() ? "<span class=\"bad\">none: the first already burns</span>"
                                : escape_xml(run.recommended),
        run.seconds);
  }
  html += "</table>\n";

  html += "<h2>Separate rates against one rate</h2>\n<p>The same style fine-tune with the text encoder at a fifth "
          "of the UNet's rate (<b>style</b>) and at the UNet's rate (<b>coupled</b>). The stabilised loss uses fixed "
          "noise and timesteps, so the curves compare across epochs and runs.</p>\n";
  html += metric_plot(result, {"style", "coupled"}, "loss/stabilize-train", "Stabilised training loss", "loss");
  html += metric_plot(result, {"style", "coupled"}, "loss/val", "Validation loss (fixed noise)", "loss");
  html += "<h2>Over-training, part by part</h2>\n";
  html += metric_plot(result, {"unet-normal", "unet-high", "te-normal", "te-high"}, "loss/stabilize-train",
                      "Stabilised training loss of the over-training runs", "loss");

  for (const auto& run : result.runs) {
    html += fmt::format("<h2 id=\"{}\">{}: {}</h2>\n<p>{}</p>\n", escape_xml(run.experiment.name),
                        escape_xml(run.experiment.name), escape_xml(run.experiment.title),
                        escape_xml(run.experiment.question));
    html += "<ul class=\"verdicts\">";
    for (const auto& v : run.verdicts) html += "<li>" + escape_xml(v) + "</li>";
    html += "</ul>\n<div class=\"media\">";
    html += inline_image(run.run_dir / "grid" / "grid.png", run.experiment.name + " grid", "image/png");
    html += inline_image(run.run_dir / "grid" / "progress.gif", run.experiment.name + " progression", "image/gif");
    html += "</div>\n";
    html += "<div class=\"media\">";
    for (const char* plot : {"change_and_bleed.svg", "image_statistics.svg"}) {
      const fs::path path = run.run_dir / "diagnose" / plot;
      if (fs::is_regular_file(path)) html += inline_svg(read_file(path));
    }
    html += "</div>\n";
    html += fmt::format("<p><a href=\"runs/{0}/report.html\">the {0} run's report</a></p>\n",
                        escape_xml(run.experiment.name));
  }

  html += "<h2>Merges</h2>\n<p>A weighted sum that mixes the base back into the burnt UNet run, and an "
          "add-difference that carries the style fine-tune (style − base) onto another fine-tune of the same base "
          "(te-normal). Files: ";
  for (const auto& m : result.merges) html += "<code>" + escape_xml(fs::relative(m, out_dir).string()) + "</code> ";
  html += "</p>\n" + inline_image(out_dir / "merges" / "grid" / "grid.png", "merges", "image/png");
  html += "<p class=\"note\">Written by <code>kiln demo</code>. Cells: DPM++ 2M Karras, 16 steps, cfg 5, seed 1; the "
          "diagnosis uses seeds 1-4 and three more subjects without the activation phrase.</p>\n</body></html>\n";
  const fs::path path = out_dir / "report.html";
  write_text_atomically(path, html);
  return path;
}

}  // namespace kiln
