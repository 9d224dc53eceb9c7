// CLIP text encoder (transformers CLIPTextModel naming) for SD 1.x conditioning.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "models/configs.h"

namespace kiln {

struct CLIPAttentionImpl : torch::nn::Module {
  CLIPAttentionImpl(int64_t dim, int64_t heads);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);
  int64_t heads_;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(CLIPAttention);

struct CLIPMLPImpl : torch::nn::Module {
  CLIPMLPImpl(int64_t dim, int64_t hidden, bool quick_gelu);
  torch::Tensor forward(const torch::Tensor& x);
  bool quick_gelu_;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(CLIPMLP);

struct CLIPEncoderLayerImpl : torch::nn::Module {
  explicit CLIPEncoderLayerImpl(const CLIPTextConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);
  torch::Tensor compute(const torch::Tensor& x, const torch::Tensor& mask);
  bool gradient_checkpointing = false;
  CLIPAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  CLIPMLP mlp{nullptr};
};
TORCH_MODULE(CLIPEncoderLayer);

struct CLIPEmbeddingsImpl : torch::nn::Module {
  explicit CLIPEmbeddingsImpl(const CLIPTextConfig& config);
  torch::Tensor forward(const torch::Tensor& input_ids);
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(CLIPEmbeddings);

struct CLIPEncoderImpl : torch::nn::Module {
  explicit CLIPEncoderImpl(const CLIPTextConfig& config);
  torch::nn::ModuleList layers;
};
TORCH_MODULE(CLIPEncoder);

struct CLIPTextTransformerImpl : torch::nn::Module {
  explicit CLIPTextTransformerImpl(const CLIPTextConfig& config);
  CLIPEmbeddings embeddings{nullptr};
  CLIPEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(CLIPTextTransformer);

struct CLIPTextOutput {
  torch::Tensor last_hidden_state;           // [B, L, D], after final_layer_norm
  torch::Tensor pooler_output;               // [B, D], last_hidden_state at the first EOS
  std::vector<torch::Tensor> hidden_states;  // embeddings + every layer's output (no final LN), if asked
};

struct CLIPTextModelImpl : torch::nn::Module {
  explicit CLIPTextModelImpl(const CLIPTextConfig& config);
  // input_ids [B, L <= max_position_embeddings] int64. No padding mask: SD 1.x uses the causal mask only.
  CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false);
  // SD conditioning with A1111/kohya CLIP skip: 1 = last layer (final LN applied), n >= 2 = the output
  // of the n-th layer from the end, passed through final_layer_norm. diffusers' `clip_skip` is n - 1.
  torch::Tensor encode(const torch::Tensor& input_ids, int64_t clip_skip = 1);
  const CLIPTextConfig& config() const { return config_; }
  // Recompute each encoder layer in backward instead of keeping its activations.
  void set_gradient_checkpointing(bool enabled);

  CLIPTextConfig config_;
  CLIPTextTransformer text_model{nullptr};
};
TORCH_MODULE(CLIPTextModel);

}  // namespace kiln
