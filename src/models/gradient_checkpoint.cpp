#include "models/gradient_checkpoint.h"

#include <torch/torch.h>

#include "models/autocast.h"

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

// The autocast state travels in the autograd context as a list of ints (saved_data holds IValues).
c10::List<int64_t> pack(const AutocastState& s) {
  return c10::List<int64_t>({s.cpu_enabled, static_cast<int64_t>(s.cpu_dtype), s.cuda_enabled,
                             static_cast<int64_t>(s.cuda_dtype), s.cache_enabled});
}

AutocastState unpack(const c10::IValue& value) {
  const auto v = value.toIntList();
  AutocastState s;
  s.cpu_enabled = v[0] != 0;
  s.cpu_dtype = static_cast<torch::ScalarType>(v[1]);
  s.cuda_enabled = v[2] != 0;
  s.cuda_dtype = static_cast<torch::ScalarType>(v[3]);
  s.cache_enabled = v[4] != 0;
  return s;
}

// The reentrant scheme of torch.utils.checkpoint: forward without a graph; backward recomputes the
// block with a graph on detached copies of the inputs and back-propagates through it, which
// accumulates the parameters' gradients and yields the inputs'. Backward usually runs after the
// AutocastGuard of the forward has closed, so the recomputation re-enters the autocast state the
// forward saw; otherwise it would compute in fp32 (different numbers, or an error where a bf16
// saved input meets an fp32 weight).
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
    const auto autocast = current_autocast_state();
    ctx->saved_data["autocast"] = pack(autocast);
    // libtorch 1.13 caches autocast's low-precision copies of the weights without looking at grad
    // mode: a copy made here, under no_grad, would have no history, and a later use of the same
    // weight in this autocast scope (the recomputation, when backward runs inside the scope) would
    // get it and lose the weight's gradient. So this graph-less pass casts without the cache.
    auto uncached = autocast;
    uncached.cache_enabled = false;
    AutocastStateGuard no_cache(uncached);
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
      AutocastStateGuard autocast(unpack(ctx->saved_data["autocast"]));
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
