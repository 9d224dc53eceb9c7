// Comparison grids: rows x columns of equally sized cells with readable row and column labels.
#pragma once
#include <string>
#include <vector>

#include "image/font.h"
#include "image/image.h"

namespace kiln {

struct GridLayout {
  std::string title;                       // drawn above everything when non-empty
  std::vector<std::string> row_labels;     // one per row (left margin), may be empty
  std::vector<std::string> column_labels;  // one per column (top margin), may be empty
  int label_pixel_height = 0;              // 0: chosen from the cell size (readable at a glance)
  int gap = 4;                             // pixels between cells
  Rgb background{255, 255, 255};
  Rgb text_color{0, 0, 0};
};

// Where make_grid puts everything, so callers (and tests) can find a cell in the output.
struct GridGeometry {
  int label_pixel_height = 0;  // the text size actually used
  int left = 0;                // x of the first column: width of the row-label margin
  int top = 0;                 // y of the first row: title plus column-label margin
  int cell_width = 0, cell_height = 0, gap = 0;
  int width = 0, height = 0;  // the whole picture
  int cell_x(int column) const { return left + column * (cell_width + gap); }
  int cell_y(int row) const { return top + row * (cell_height + gap); }
};

// The layout make_grid would use for `rows` x `columns` cells of the given size.
GridGeometry plan_grid(int rows, int columns, int cell_width, int cell_height, const GridLayout& layout,
                       const Font& font);

// cells[row][column]; every cell must have the same size (kiln::Error otherwise). Labels wrap onto
// several lines when longer than their margin allows.
Image make_grid(const std::vector<std::vector<Image>>& cells, const GridLayout& layout, const Font& font);

// One frame with a caption strip under the picture (used for the checkpoint GIF).
Image add_caption(const Image& image, const std::string& caption, const Font& font, int pixel_height = 0);

}  // namespace kiln
