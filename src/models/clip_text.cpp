#include "models/clip_text.h"

#include "models/attention.h"
#include "models/gradient_checkpoint.h"

namespace kiln {

CLIPAttentionImpl::CLIPAttentionImpl(int64_t dim, int64_t heads) : heads_(heads) {
  q_proj = register_module("q_proj", torch::nn::Linear(dim, dim));
  k_proj = register_module("k_proj", torch::nn::Linear(dim, dim));
  v_proj = register_module("v_proj", torch::nn::Linear(dim, dim));
  out_proj = register_module("out_proj", torch::nn::Linear(dim, dim));
}

torch::Tensor CLIPAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  return out_proj(multi_head_attention(q_proj(x), k_proj(x), v_proj(x), heads_, mask));
}

CLIPMLPImpl::CLIPMLPImpl(int64_t dim, int64_t hidden, bool quick_gelu) : quick_gelu_(quick_gelu) {
  fc1 = register_module("fc1", torch::nn::Linear(dim, hidden));
  fc2 = register_module("fc2", torch::nn::Linear(hidden, dim));
}

torch::Tensor CLIPMLPImpl::forward(const torch::Tensor& x) {
  auto h = fc1(x);
  h = quick_gelu_ ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return fc2(h);
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& c) {
  auto layer_norm = [&] {
    return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
  };
  self_attn = register_module("self_attn", CLIPAttention(c.hidden_size, c.num_attention_heads));
  layer_norm1 = register_module("layer_norm1", layer_norm());
  mlp = register_module("mlp", CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act == "quick_gelu"));
  layer_norm2 = register_module("layer_norm2", layer_norm());
}

torch::Tensor CLIPEncoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  if (gradient_checkpointing && is_training())
    return checkpointed([this](const std::vector<torch::Tensor>& in) { return compute(in[0], in[1]); },
                        {x, mask});
  return compute(x, mask);
}

torch::Tensor CLIPEncoderLayerImpl::compute(const torch::Tensor& x, const torch::Tensor& mask) {
  auto h = x + self_attn(layer_norm1(x), mask);
  return h + mlp(layer_norm2(h));
}

CLIPEmbeddingsImpl::CLIPEmbeddingsImpl(const CLIPTextConfig& c) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  position_embedding =
      register_module("position_embedding", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
}

torch::Tensor CLIPEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  const int64_t length = input_ids.size(1);
  TORCH_CHECK(length <= position_embedding->weight.size(0), "prompt of ", length,
              " tokens is longer than the text encoder's ", position_embedding->weight.size(0), " positions");
  auto positions = torch::arange(length, input_ids.options().dtype(torch::kLong));
  return token_embedding(input_ids) + position_embedding(positions).unsqueeze(0);  // [B, L, D]
}

CLIPEncoderImpl::CLIPEncoderImpl(const CLIPTextConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(CLIPEncoderLayer(c));
}

CLIPTextTransformerImpl::CLIPTextTransformerImpl(const CLIPTextConfig& c) {
  embeddings = register_module("embeddings", CLIPEmbeddings(c));
  encoder = register_module("encoder", CLIPEncoder(c));
  final_layer_norm = register_module(
      "final_layer_norm",
      torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& config) : config_(config) {
  text_model = register_module("text_model", CLIPTextTransformer(config));
}

void CLIPTextModelImpl::set_gradient_checkpointing(bool enabled) {
  for (const auto& layer : *text_model->encoder->layers)
    layer->as<CLIPEncoderLayer>()->gradient_checkpointing = enabled;
}

CLIPTextOutput CLIPTextModelImpl::forward(const torch::Tensor& input_ids, bool output_hidden_states) {
  auto& model = *text_model;
  auto h = model.embeddings(input_ids);
  const auto mask = causal_attention_mask(input_ids.size(1), h.scalar_type(), h.device());
  CLIPTextOutput out;
  if (output_hidden_states) out.hidden_states.push_back(h);
  for (const auto& layer : *model.encoder->layers) {
    h = layer->as<CLIPEncoderLayer>()->forward(h, mask);
    if (output_hidden_states) out.hidden_states.push_back(h);
  }
  out.last_hidden_state = model.final_layer_norm(h);
  // transformers: with the legacy eos_token_id == 2 configs the EOS is the largest id; otherwise the first
  // EOS.
  auto eos_index = config_.eos_token_id == 2 ? input_ids.argmax(-1)
                                             : (input_ids == config_.eos_token_id).to(torch::kInt).argmax(-1);
  auto batch_index = torch::arange(input_ids.size(0), eos_index.options());
  out.pooler_output = out.last_hidden_state.index({batch_index, eos_index});
  return out;
}

torch::Tensor CLIPTextModelImpl::encode(const torch::Tensor& input_ids, int64_t clip_skip) {
  TORCH_CHECK(clip_skip >= 1 && clip_skip <= config_.num_hidden_layers, "clip skip ", clip_skip,
              " outside 1..", config_.num_hidden_layers);
  if (clip_skip == 1) return forward(input_ids).last_hidden_state;
  auto out = forward(input_ids, /*output_hidden_states=*/true);
  return text_model->final_layer_norm(out.hidden_states[out.hidden_states.size() - clip_skip]);
}

}  // namespace kiln
