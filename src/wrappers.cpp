#include "cppfabric/wrappers.hpp"

#include <torch/torch.h>

#include "backward_scope.hpp"
#include "cppfabric/callbacks.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/strategies/strategy.hpp"

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

bool FabricModuleBase::is_training() const { return original_->is_training(); }

Guard FabricModuleBase::begin_forward() const {
  Guard guard = strategy_->precision()->forward_context();
  guard.adopt(strategy_->forward_context(*forward_module_));
  return guard;
}

at::Tensor FabricModuleBase::convert_input(const at::Tensor& tensor) const {
  return strategy_->precision()->convert_input(tensor);
}

at::Tensor FabricModuleBase::finish_output(const at::Tensor& tensor) const {
  at::Tensor out = strategy_->precision()->convert_output(tensor);
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

void FabricOptimizer::zero_grad(bool set_to_none) { optimizer_->zero_grad(set_to_none); }

std::vector<torch::optim::OptimizerParamGroup>& FabricOptimizer::param_groups() const {
  return optimizer_->param_groups();
}

}  // namespace cppfabric
