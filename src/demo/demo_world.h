// The demo's synthetic world: plain shape pictures a base model learns from, a small style set with
// an invented look and an activation phrase (what a fine-tuner would bring), and the three test
// prompt sets every experiment is judged by.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "data/synthetic.h"

namespace kiln {

inline constexpr std::string_view kDemoActivationPhrase = "kilnglaze style";

struct DemoWorldSize {
  int plain_count = 3000;  // pictures the base model learns the world from
  int style_count = 26;   // the size of a typical small style set
  int look_count = 150;   // pictures in each style look, for the VAE only (see DemoWorld::looks)
  int size = 64;          // pixels (8x8 latents)
  // At least 0.4 of the side (25 px): a shape then spans 3 latent cells or more, so its kind
  // survives the VAE (a third, 21 px, failed the round trip in 5 % of pictures).
  ShapeSizes shapes{0.4, 0.75};
};

struct DemoWorld {
  std::filesystem::path plain;  // "a red circle, white background"
  std::filesystem::path style;  // "kilnglaze style, a red circle", striped look
  // Pictures in every style look (synthetic_style_looks(), one folder each; other seeds than the
  // style set) that only the VAE learns from: a real SD VAE can draw any look, so a style must be
  // expressible in latents before a UNet can learn it.
  std::filesystem::path looks;
  DemoWorldSize size;
};

// Writes (or reuses, when the folders hold the expected number of pictures) the world under `dir`.
DemoWorld write_demo_world(const std::filesystem::path& dir, const DemoWorldSize& size);

struct PromptSet {
  std::string name;  // short, for file names and labels
  std::string title;
  std::vector<std::string> prompts;
};

// The three test prompt sets: a subject without the activation phrase (does the style
// bleed where it was not asked for?), "black and white circles" (the classic burn test: colour
// must stay absent), and a subject with the activation phrase (did the style arrive?).
std::vector<PromptSet> demo_prompt_sets();

// Every prompt of the sets, in order (the grids' columns).
std::vector<std::string> demo_prompts();

// The prompts without the activation phrase — the sets' and three more subjects — where the style
// must not show, so any change there is a burn sign. The diagnosis judges these; the styled prompts
// show whether the style arrived.
std::vector<std::string> demo_control_prompts();

// What the diagnosis draws: the control prompts, then the prompts with the activation phrase (which
// should change: the diagnosis reports how far, apart from the burn signs).
std::vector<std::string> demo_diagnosis_prompts();

}  // namespace kiln
