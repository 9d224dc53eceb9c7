// How far a fine-tune moved each part of the model from its base: relative Frobenius drift
// ‖W−W₀‖/‖W₀‖ per text-encoder layer, per UNet block and for the VAE, so that a report can point
// at the part that was over-trained rather than at the model as a whole.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace kiln {

struct DriftGroup {
  std::string name;  // "te.layer.3", "unet.down.1", "vae", or a component total "te" | "unet"
  // sqrt(Σ‖W−W₀‖²) / sqrt(Σ‖W₀‖²) over the group's tensors, accumulated in float64. A group whose
  // base weights are all zero reads 0 when unchanged and +inf otherwise.
  double relative_drift;
  int64_t parameters;  // elements in the group's tensors
};

struct DriftReport {
  // Text encoder: te.embeddings, te.layer.0 … te.layer.N, te.final_layer_norm; UNet: unet.conv_in,
  // unet.time_embedding, unet.down.0-3, unet.mid, unet.up.0-3, unet.out; then vae. Tensors that fit
  // no block go to "te.other" / "unet.other" at the end of their component. Groups without
  // tensors (absent components) are left out.
  std::vector<DriftGroup> groups;
  std::vector<DriftGroup> components;  // "te", "unet", "vae", those present
};

// Compares every tensor of `trained` with the same-named one in `base`. A component must be
// present in both or in neither; a key in one but not the other, or a shape mismatch, throws
// kiln::Error naming the component and key. Checkpoint::extra (EMA copies, schedule buffers) is
// not compared.
DriftReport weight_drift_report(const Checkpoint& trained, const Checkpoint& base);

// The per-block groups followed by the per-component totals ("te", "unet", then "vae" only once:
// its single group already is the total).
std::vector<DriftGroup> weight_drift(const Checkpoint& trained, const Checkpoint& base);

// The group a diffusers tensor name falls in, e.g. ("unet", "down_blocks.1.attentions.0.proj_in.weight")
// -> "unet.down.1"; `component` is "te" | "unet" | "vae".
std::string drift_group_name(const std::string& component, const std::string& key);

}  // namespace kiln
