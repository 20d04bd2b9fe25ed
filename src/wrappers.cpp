#include "cppfabric/wrappers.hpp"

#include <torch/torch.h>

#include <set>

#include "backward_scope.hpp"
#include "checkpoint/adapters.hpp"
#include "cppfabric/callbacks.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/precision/mixed.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/strategies/strategy.hpp"
#include "cppfabric/utilities/errors.hpp"

namespace cppfabric {

namespace detail {
std::atomic<int>& fabric_backward_depth() {
  static std::atomic<int> depth{0};
  return depth;
}
}  // namespace detail

FabricModuleBase::FabricModuleBase(std::shared_ptr<torch::nn::Module> original,
                                   std::shared_ptr<torch::nn::Module> forward_module,
                                   std::shared_ptr<strategies::Strategy> strategy,
                                   c10::Device device)
    : original_(std::move(original)),
      forward_module_(std::move(forward_module)),
      strategy_(std::move(strategy)),
      device_(device) {}

void FabricModuleBase::train(bool on) { original_->train(on); }

c10::Device FabricModuleBase::device() const {
  for (const auto& p : original_->parameters()) return p.device();
  for (const auto& b : original_->buffers()) return b.device();
  return device_;
}

c10::ScalarType FabricModuleBase::dtype() const {
  for (const auto& p : original_->parameters())
    if (p.is_floating_point()) return p.scalar_type();
  for (const auto& b : original_->buffers())
    if (b.is_floating_point()) return b.scalar_type();
  return c10::typeMetaToScalarType(c10::get_default_dtype());
}

void FabricModuleBase::to(c10::Device device) {
  original_->to(device);
  device_ = device;
}

void FabricModuleBase::to(c10::ScalarType dtype) { original_->to(dtype); }

LoadStateDictResult FabricModuleBase::load_state_dict(const Value& state, bool strict) {
  if (!state.is_dict()) {
    throw std::invalid_argument(
        fmt::format("FabricModule::load_state_dict expects a dict of name -> tensor, got a {} ({})",
                    state.type_name(), state.repr()));
  }
  LoadStateDictResult result;
  std::set<std::string> expected;
  for (const auto& item : original_->named_parameters()) expected.insert(item.key());
  for (const auto& item : original_->named_buffers()) expected.insert(item.key());
  std::set<std::string> given;
  for (const auto& [key, value] : state.items()) {
    if (key.kind() == Value::Kind::String) given.insert(key.to_string());
  }
  for (const auto& name : expected)
    if (!given.count(name)) result.missing_keys.push_back(name);
  for (const auto& name : given)
    if (!expected.count(name)) result.unexpected_keys.push_back(name);
  // The adapter checks names (strict), shapes and dtypes and reports every mismatch at once.
  checkpoint::ModuleStateful(original_).load_state_dict(state, strict);
  return result;
}

bool FabricModuleBase::is_training() const { return original_->is_training(); }

Guard FabricModuleBase::begin_forward() const {
  Guard guard = strategy_->precision()->forward_context();
  guard.adopt(strategy_->forward_context(*forward_module_));
  return guard;
}

at::Tensor FabricModuleBase::convert_input(const at::Tensor& tensor) const {
  return strategy_->convert_input(*forward_module_, strategy_->precision()->convert_input(tensor));
}

at::Tensor FabricModuleBase::finish_output(const at::Tensor& tensor) const {
  at::Tensor out =
      strategy_->convert_output(*forward_module_, strategy_->precision()->convert_output(tensor));
  if (out.defined() && out.requires_grad() && strategy_->precision()->requires_fabric_backward()) {
    out.register_hook([](const at::Tensor&) {
      if (detail::fabric_backward_depth().load() == 0) {
        throw std::runtime_error(
            "The current strategy and precision selection requires you to call "
            "`fabric.backward(loss)` instead of `loss.backward()`.");
      }
    });
  }
  return out;
}

FabricOptimizer::FabricOptimizer(
    std::shared_ptr<torch::optim::Optimizer> optimizer,
    std::shared_ptr<strategies::Strategy> strategy,
    std::shared_ptr<const std::vector<std::shared_ptr<Callback>>> callbacks)
    : optimizer_(std::move(optimizer)),
      strategy_(std::move(strategy)),
      callbacks_(std::move(callbacks)) {}

void FabricOptimizer::step() {
  strategy_->optimizer_step(*optimizer_);
  if (callbacks_) {
    for (const auto& callback : *callbacks_)
      callback->on_after_optimizer_step(*strategy_, *optimizer_);
  }
}

at::Tensor FabricOptimizer::step(const std::function<at::Tensor()>& closure) {
  if (!closure) {
    step();
    return {};
  }
  const auto* mixed = dynamic_cast<const precision::MixedPrecision*>(strategy_->precision().get());
  if (mixed != nullptr && mixed->scaler()) {
    throw std::runtime_error(
        "FabricOptimizer::step(closure): a closure is not supported with a GradScaler "
        "(precision \"16-mixed\"), as in PyTorch. Call fabric.backward(loss) and then "
        "optimizer.step() without a closure, or use \"bf16-mixed\".");
  }
  at::Tensor loss;
  if (dynamic_cast<torch::optim::LBFGS*>(optimizer_.get()) != nullptr) {
    // LBFGS re-evaluates the closure during its line search: it must run inside step().
    loss = optimizer_->step(closure);
  } else {
    // Every other LibTorch optimizer evaluates the closure once, with gradients enabled, and
    // then updates: the same as running it here and stepping through precision and strategy.
    {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    strategy_->optimizer_step(*optimizer_);
  }
  if (callbacks_) {
    for (const auto& callback : *callbacks_)
      callback->on_after_optimizer_step(*strategy_, *optimizer_);
  }
  return loss;
}

void FabricOptimizer::zero_grad(bool set_to_none) { optimizer_->zero_grad(set_to_none); }

Value FabricOptimizer::state_dict() const {
  return checkpoint::OptimizerStateful(optimizer_).state_dict();
}

void FabricOptimizer::load_state_dict(const Value& state) {
  checkpoint::OptimizerStateful(optimizer_).load_state_dict(state);
}

std::vector<torch::optim::OptimizerParamGroup>& FabricOptimizer::param_groups() const {
  return optimizer_->param_groups();
}

}  // namespace cppfabric
