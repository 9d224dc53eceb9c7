// Prompt adherence in the synthetic world (data/synthetic.h): does a picture show the colour and
// shape its prompt asked for? A prompt such as "a red circle, white background" is parsed into its
// world words, the picture is read back (plain or two-colour striped background from the border,
// the shape as what stands out from it, its colour by nearest world colour, its kind by how much of
// its bounding box it fills), and the two are compared. No hub model is needed, so `kiln diagnose`
// can measure whether a fine-tune still draws what it is told. Torch-free.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "data/synthetic.h"
#include "image/image.h"

namespace kiln {

// The world words of a prompt, in the spelling of synthetic_shape_colors() / synthetic_shapes() /
// synthetic_backgrounds().
struct WorldPrompt {
  std::string colour;      // "red", "green", "blue", "yellow", "black", "white"
  std::string shape;       // "circle", "square", "triangle"
  std::string background;  // "white", "black", "grey", or empty when the prompt names none
};

// Case-insensitive; words are runs of letters. The first shape word ("circle" or "circles", …)
// that directly follows a world shape colour gives colour and shape: "a red circle" -> red circle.
// "<bg> background" anywhere gives the background ("gray" is read as "grey"). nullopt when no colour
// word directly precedes a shape word ("a photo of a person", "a circle", "a red big circle") and
// when two colours joined by "and"/"or" precede it ("black and white circles", "red or blue
// squares"): such a prompt has no single right answer to check.
std::optional<WorldPrompt> parse_world_prompt(std::string_view prompt);

// What read_shape saw. When `found` is false the other words are empty and the picture counts as
// showing neither the asked colour nor the asked shape.
struct ShapeReading {
  bool found = false;
  std::string colour;              // nearest world shape colour to the shape's interior mean
  std::string shape;               // nearest fill ratio: circle π/4, square 1, triangle 1/2
  std::string background;          // nearest world background, or "striped" for a two-colour background
  double foreground_fraction = 0;  // pixels of the shape / pixels of the picture
  double fill_ratio = 0;           // pixels of the shape / pixels of its bounding box
  double contrast = 0;             // how far the shape stands out (RGB distance, 0-441)
  // Pixels that stand out from the background (as the shape mask does) but lie outside the shape
  // and a band of 1/32 of the side round it, over all pixels: speckles, smears, a second blob.
  double stray_fraction = 0;
  // The share of the picture's pixels within kMaxRimDistance of the style rim's colour and nearer
  // it than to any shape colour (blurred edges between world colours stay farther away).
  double rim_fraction = 0;
};

// A clean drawing: the shape was found and at most kMaxStrayFraction of the picture stands out
// from the background elsewhere.
inline constexpr double kMaxStrayFraction = 0.02;
// The style's look shows: a striped background, or rim-coloured pixels on at least kMinRimFraction
// of the picture (the style sets' rims cover 3-12 % of it at 64 px).
inline constexpr double kMaxRimDistance = 60;
inline constexpr double kMinRimFraction = 0.01;
bool is_clean(const ShapeReading& reading);
bool shows_style(const ShapeReading& reading);

// Reading thresholds (documented in docs/diagnose.md):
// - background: per-channel median of the outer ring (1/32 of the side wide, at least 1 pixel);
//   but when the two commonest of three colour clusters of the outermost pixels alternate at least
//   6 times along the border and the lesser holds a fifth of it, the background is the segment
//   between those two colours (the style set's stripes, also when blurred), and a pixel's distance
//   to the background is its distance to that segment;
// - contrast: the 98th percentile of that distance; below kMinContrast nothing is found;
// - shape mask: pixels farther than half the contrast from the background (halfway across a
//   blurred edge, so blur moves the outline little), its largest 4-connected region;
// - nothing is found when that region covers under kMinShapeFraction or over kMaxShapeFraction of
//   the picture;
// - colour: mean of the region eroded by 1/32 of the side (away from blurred edges), leaving out
//   pixels nearer the style set's rim colour (kStyleRim) than to any shape colour, then the
//   nearest shape colour in RGB.
inline constexpr double kMinContrast = 48;
inline constexpr double kMinShapeFraction = 0.03;
inline constexpr double kMaxShapeFraction = 0.75;

// Throws kiln::Error for an empty image or one whose pixel buffer does not match its size. `rim` is
// the style look's rim colour (data/synthetic.h), left out of the colour and counted as rim.
ShapeReading read_shape(const Image& image, Rgb rim = kStyleRim);

struct PromptAdherence {
  double colour = 0;  // fraction of cells whose shape has the asked colour
  double shape = 0;   // fraction of cells whose shape is the asked shape
  double both = 0;    // fraction of cells right in both
  // Fraction of cells whose background is the asked one; cells whose prompt names none count as
  // right when the background is plain (not striped).
  double background = 0;
  double clean = 0;       // fraction of cells drawn cleanly (is_clean)
  double correct = 0;     // colour, shape and background right, and clean: the picture as asked
  double style_free = 0;  // fraction of cells where the style's look does not show (!shows_style)
  int cells = 0;
};

// Reads every picture and compares it with its prompt; all fractions are 0 when there are no cells.
PromptAdherence prompt_adherence(const std::vector<std::pair<WorldPrompt, Image>>& cells, Rgb rim = kStyleRim);

}  // namespace kiln
