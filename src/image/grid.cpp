// Comparison grids. Text is sized from the cells (a 512 px cell gets ~42 px labels) so a grid is
// readable at a glance when scaled down; margins are measured from the wrapped labels, so short
// labels do not waste space and long ones wrap instead of running into the pictures.
#include "image/grid.h"

#include <algorithm>
#include <string>

#include "util/error.h"

namespace kiln {

namespace {

int auto_pixel_height(int width, int height) { return std::max(14, std::min(width, height) / 12); }

// Vertical rhythm shared by every text block: lines `line_height` apart, `pixel_height` tall.
struct TextMetrics {
  int pixel_height;
  int line_height;
  explicit TextMetrics(int px) : pixel_height(px), line_height(px + (px + 4) / 5) {}
  int block_height(std::size_t lines) const {
    return lines == 0 ? 0 : static_cast<int>(lines) * line_height - (line_height - pixel_height);
  }
};

int widest(const std::vector<std::string>& lines, const Font& font, int px) {
  int w = 0;
  for (const std::string& line : lines) w = std::max(w, font.text_width(line, px));
  return w;
}

// Lines centred on `center_x`, the block starting at `top`.
void draw_centered(Image& image, const std::vector<std::string>& lines, int center_x, int top,
                   const Font& font, const TextMetrics& m, Rgb color) {
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const int w = font.text_width(lines[i], m.pixel_height);
    font.draw(image, center_x - w / 2, top + static_cast<int>(i) * m.line_height, lines[i], m.pixel_height,
              color);
  }
}

struct GridPlan {
  GridGeometry geometry;
  int pad = 0;
  int title_pixel_height = 0;
  std::vector<std::string> title_lines;
  std::vector<std::vector<std::string>> row_lines;     // per row
  std::vector<std::vector<std::string>> column_lines;  // per column
};

GridPlan make_plan(int rows, int columns, int cell_w, int cell_h, const GridLayout& layout,
                   const Font& font) {
  if (rows <= 0 || columns <= 0) throw Error("make_grid: no cells to lay out");
  if (cell_w <= 0 || cell_h <= 0)
    throw Error("make_grid: empty cells (" + std::to_string(cell_w) + "x" + std::to_string(cell_h) + ")");
  if (layout.gap < 0) throw Error("make_grid: negative gap " + std::to_string(layout.gap));
  if (!layout.row_labels.empty() && static_cast<int>(layout.row_labels.size()) != rows)
    throw Error("make_grid: " + std::to_string(layout.row_labels.size()) + " row labels for " +
                std::to_string(rows) + " rows");
  if (!layout.column_labels.empty() && static_cast<int>(layout.column_labels.size()) != columns)
    throw Error("make_grid: " + std::to_string(layout.column_labels.size()) + " column labels for " +
                std::to_string(columns) + " columns");

  GridPlan plan;
  GridGeometry& g = plan.geometry;
  g.cell_width = cell_w;
  g.cell_height = cell_h;
  g.gap = layout.gap;
  g.label_pixel_height =
      layout.label_pixel_height > 0 ? layout.label_pixel_height : auto_pixel_height(cell_w, cell_h);
  const TextMetrics m(g.label_pixel_height);
  plan.pad = std::max(4, g.label_pixel_height / 2);
  const int pad = plan.pad;

  // Row labels: start at half a cell (or six ems) wide and widen while a label is taller than its row.
  if (!layout.row_labels.empty()) {
    int natural = 1;
    for (const std::string& label : layout.row_labels)
      natural = std::max(natural, font.text_width(label, m.pixel_height));
    int wrap_width = std::min(natural, std::max(cell_w / 2, 6 * m.pixel_height));
    while (true) {
      plan.row_lines.clear();
      bool too_tall = false;
      for (const std::string& label : layout.row_labels) {
        plan.row_lines.push_back(font.wrap(label, m.pixel_height, wrap_width));
        too_tall = too_tall || m.block_height(plan.row_lines.back().size()) > cell_h;
      }
      if (!too_tall || wrap_width >= natural) break;
      wrap_width = std::min(natural, wrap_width + 2 * m.pixel_height);
    }
    int w = 0;
    for (const auto& lines : plan.row_lines) w = std::max(w, widest(lines, font, m.pixel_height));
    g.left = w + 2 * pad;
  }

  int column_band = 0;
  if (!layout.column_labels.empty()) {
    const int wrap_width = std::max(cell_w - pad, 2 * m.pixel_height);
    std::size_t most = 0;
    for (const std::string& label : layout.column_labels) {
      plan.column_lines.push_back(font.wrap(label, m.pixel_height, wrap_width));
      most = std::max(most, plan.column_lines.back().size());
    }
    column_band = m.block_height(most) + 2 * pad;
  }

  g.width = g.left + columns * cell_w + (columns - 1) * g.gap;

  int title_band = 0;
  if (!layout.title.empty()) {
    plan.title_pixel_height = g.label_pixel_height + g.label_pixel_height / 4;
    const TextMetrics tm(plan.title_pixel_height);
    plan.title_lines = font.wrap(layout.title, tm.pixel_height, g.width - 2 * pad);
    title_band = tm.block_height(plan.title_lines.size()) + 2 * pad;
  }

  g.top = title_band + column_band;
  g.height = g.top + rows * cell_h + (rows - 1) * g.gap;
  return plan;
}

}  // namespace

GridGeometry plan_grid(int rows, int columns, int cell_width, int cell_height, const GridLayout& layout,
                       const Font& font) {
  return make_plan(rows, columns, cell_width, cell_height, layout, font).geometry;
}

Image make_grid(const std::vector<std::vector<Image>>& cells, const GridLayout& layout, const Font& font) {
  if (cells.empty() || cells[0].empty()) throw Error("make_grid: no cells to lay out");
  const int rows = static_cast<int>(cells.size());
  const int columns = static_cast<int>(cells[0].size());
  const int cell_w = cells[0][0].width, cell_h = cells[0][0].height;
  for (int r = 0; r < rows; ++r) {
    if (static_cast<int>(cells[r].size()) != columns)
      throw Error("make_grid: row " + std::to_string(r) + " has " + std::to_string(cells[r].size()) +
                  " cells, row 0 has " + std::to_string(columns));
    for (int c = 0; c < columns; ++c) {
      const Image& cell = cells[r][c];
      if (cell.width != cell_w || cell.height != cell_h)
        throw Error("make_grid: cell [" + std::to_string(r) + "][" + std::to_string(c) + "] is " +
                    std::to_string(cell.width) + "x" + std::to_string(cell.height) + ", cell [0][0] is " +
                    std::to_string(cell_w) + "x" + std::to_string(cell_h));
    }
  }

  const GridPlan plan = make_plan(rows, columns, cell_w, cell_h, layout, font);
  const GridGeometry& g = plan.geometry;
  const TextMetrics m(g.label_pixel_height);
  Image out(g.width, g.height, layout.background);

  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < columns; ++c) out.paste(cells[r][c], g.cell_x(c), g.cell_y(r));

  if (!plan.title_lines.empty())
    draw_centered(out, plan.title_lines, g.width / 2, plan.pad, font, TextMetrics(plan.title_pixel_height),
                  layout.text_color);

  // Column labels sit just above their column, so multi-line and one-line labels share a baseline edge.
  for (std::size_t c = 0; c < plan.column_lines.size(); ++c) {
    const auto& lines = plan.column_lines[c];
    const int top = g.top - plan.pad - m.block_height(lines.size());
    draw_centered(out, lines, g.cell_x(static_cast<int>(c)) + g.cell_width / 2, top, font, m,
                  layout.text_color);
  }

  for (std::size_t r = 0; r < plan.row_lines.size(); ++r) {
    const auto& lines = plan.row_lines[r];
    const int top = g.cell_y(static_cast<int>(r)) + (g.cell_height - m.block_height(lines.size())) / 2;
    draw_centered(out, lines, g.left / 2, top, font, m, layout.text_color);
  }
  return out;
}

Image add_caption(const Image& image, const std::string& caption, const Font& font, int pixel_height) {
  if (caption.empty()) return image;
  const TextMetrics m(pixel_height > 0 ? pixel_height : auto_pixel_height(image.width, image.height));
  const int pad = std::max(4, m.pixel_height / 2);
  const std::vector<std::string> lines = font.wrap(caption, m.pixel_height, image.width - 2 * pad);
  const int strip = m.block_height(lines.size()) + 2 * pad;
  Image out(image.width, image.height + strip, Rgb{255, 255, 255});
  out.paste(image, 0, 0);
  draw_centered(out, lines, image.width / 2, image.height + pad, font, m, Rgb{0, 0, 0});
  return out;
}

}  // namespace kiln
