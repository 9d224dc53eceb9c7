#include "models/gradient_checkpoint.h"

#include <torch/torch.h>

namespace kiln {

namespace {

struct BlockHolder : torch::CustomClassHolder {
  explicit BlockHolder(CheckpointedBlock b) : block(std::move(b)) {}
  CheckpointedBlock block;
};

// The capsule keeps the holder alive; the IValue it came from outlives the call.
const CheckpointedBlock& block_in(const c10::IValue& capsule) {
  return static_cast<const BlockHolder*>(capsule.toCapsule().get())->block;
}

// The reentrant scheme of torch.utils.checkpoint: forward without a graph; backward recomputes the
// block with a graph on detached copies of the inputs and back-propagates through it, which
// accumulates the parameters' gradients and yields the inputs'.
class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, c10::IValue holder,
                                                at::TensorList inputs) {
    ctx->saved_data["block"] = holder;
    // Which inputs want gradients, read here: the saved copies come back without that flag.
    c10::List<bool> needs_grad;
    for (const auto& t : inputs) needs_grad.push_back(t.defined() && t.requires_grad());
    ctx->saved_data["needs_grad"] = needs_grad;
    ctx->save_for_backward(inputs.vec());
    torch::NoGradGuard no_grad;
    return {block_in(holder)(inputs.vec())};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto needs_grad = ctx->saved_data["needs_grad"].toBoolList();
    std::vector<torch::Tensor> inputs;
    for (size_t i = 0; i < saved.size(); ++i)
      inputs.push_back(saved[i].defined() ? saved[i].detach().requires_grad_(needs_grad[i]) : saved[i]);
    torch::Tensor output;
    {
      torch::AutoGradMode enable(true);
      output = block_in(ctx->saved_data["block"])(inputs);
    }
    torch::autograd::backward({output}, {grad_outputs[0]});
    torch::autograd::variable_list grads{torch::Tensor()};  // for the holder argument
    for (const auto& t : inputs)
      grads.push_back(t.defined() && t.requires_grad() ? t.grad() : torch::Tensor());
    return grads;
  }
};

}  // namespace

torch::Tensor checkpointed(CheckpointedBlock block, const std::vector<torch::Tensor>& inputs) {
  if (!torch::GradMode::is_enabled()) return block(inputs);
  auto holder = c10::IValue::make_capsule(c10::make_intrusive<BlockHolder>(std::move(block)));
  // As a TensorList, so autograd sees each input as a variable of the graph.
  return CheckpointFunction::apply(holder, at::TensorList(inputs))[0];
}

}  // namespace kiln
