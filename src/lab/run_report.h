// `kiln report`: one HTML page about a training run that opens offline from a file, so it can be
// mailed, archived next to the checkpoints or attached to an issue. Everything is inline: CSS, the
// SVG plots and the pictures as base64 data URIs. Torch-free.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace kiln {

// Reads what a run folder holds (run.toml, metrics.jsonl, checkpoints/, samples/<checkpoint>/,
// grid/grid.png and grid/progress.gif, diagnose/diagnose.json and the diagnosis's SVG plots
// diagnose/*.svg, inlined; all but run.toml optional) and writes
// RUN_DIR/report.html atomically; returns its path. Throws kiln::Error naming the folder when it
// is not a run folder (no run.toml).
std::filesystem::path write_run_report(const std::filesystem::path& run_dir);

// The page itself, as write_run_report writes it.
std::string run_report_html(const std::filesystem::path& run_dir);

// RFC 4648 base64, standard alphabet with '=' padding.
std::string base64_encode(std::string_view bytes);

// Pieces for other offline pages (the demo's): a file as a data: URI (kiln::Error naming an unreadable
// file), and an SVG document as an inline <figure> (namespace and XML declaration dropped).
std::string data_uri(const std::filesystem::path& path, std::string_view mime);
std::string inline_svg(std::string svg);

}  // namespace kiln
