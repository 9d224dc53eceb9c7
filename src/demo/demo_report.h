// The demo's front page: one self-contained HTML file (offline, pictures inline) that tells the
// story of every experiment — the world, the verdicts, the grids and GIFs, separate against one
// learning rate, the merges — and links each run's own report.
#pragma once
#include <filesystem>

#include "demo/demo.h"

namespace kiln {

// Writes OUT/report.html atomically (and OUT/world.png, the world at a glance); returns its path.
std::filesystem::path write_demo_report(const DemoResult& result, const DemoWorld& world,
                                        const std::filesystem::path& out_dir);

}  // namespace kiln
