#include "cppfabric/strategies/strategy.hpp"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "cppfabric/accelerators/accelerator.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/precision/precision.hpp"

namespace cppfabric::strategies {

Strategy::~Strategy() = default;

void Strategy::set_accelerator(std::shared_ptr<accelerators::Accelerator> accelerator) {
  accelerator_ = std::move(accelerator);
}
void Strategy::set_precision(std::shared_ptr<precision::Precision> precision) {
  precision_ = std::move(precision);
}
void Strategy::set_checkpoint_io(std::shared_ptr<checkpoint::CheckpointIO> io) {
  checkpoint_io_ = std::move(io);
}
void Strategy::set_cluster_environment(std::shared_ptr<environments::ClusterEnvironment> env) {
  cluster_environment_ = std::move(env);
}
void Strategy::set_parallel_devices(std::vector<c10::Device> devices) {
  parallel_devices_ = std::move(devices);
}

void Strategy::setup_environment() {
  if (accelerator_) accelerator_->setup_device(root_device());
}

void Strategy::module_to_device(torch::nn::Module& module) { module.to(root_device()); }

std::shared_ptr<torch::nn::Module> Strategy::setup_module(
    std::shared_ptr<torch::nn::Module> module) {
  return module;
}

void Strategy::backward(const at::Tensor& tensor, const at::Tensor& gradient,
                        std::optional<bool> retain_graph, bool create_graph) {
  precision_->pre_backward(tensor);
  precision_->backward(tensor, gradient, retain_graph, create_graph);
  precision_->post_backward(tensor);
}

void Strategy::optimizer_step(torch::optim::Optimizer& optimizer) {
  precision_->optimizer_step(optimizer);
}

namespace {
std::vector<at::Tensor> grads_of(torch::optim::Optimizer& optimizer) {
  std::vector<at::Tensor> grads;
  for (auto& group : optimizer.param_groups()) {
    for (auto& param : group.params()) {
      if (param.grad().defined()) grads.push_back(param.grad());
    }
  }
  return grads;
}
}  // namespace

at::Tensor Strategy::clip_gradients_norm(torch::optim::Optimizer& optimizer, double max_norm,
                                         double norm_type, bool error_if_nonfinite) {
  precision_->unscale_gradients(optimizer);
  const auto grads = grads_of(optimizer);
  if (grads.empty()) return torch::zeros({});
  // Stays on the device: no host synchronisation unless error_if_nonfinite asks for a check.
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  const bool inf_norm = std::isinf(norm_type);
  for (const auto& g : grads) {
    norms.push_back(inf_norm ? g.detach().abs().max().to(torch::kFloat32)
                             : torch::linalg_vector_norm(g.detach(), norm_type, std::nullopt, false,
                                                         torch::kFloat32));
  }
  auto stacked = torch::stack(norms);
  at::Tensor total =
      inf_norm ? stacked.max()
               : torch::linalg_vector_norm(stacked, norm_type, std::nullopt, false, std::nullopt);
  if (error_if_nonfinite && !torch::isfinite(total).item<bool>()) {
    throw std::runtime_error(fmt::format(
        "The total norm of order {} for gradients is non-finite, so it cannot be clipped. Pass "
        "error_if_nonfinite=false to clip_gradients to skip this check.",
        norm_type));
  }
  auto coef = torch::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0);
  for (const auto& g : grads) g.detach().mul_(coef.to(g.device(), g.scalar_type()));
  return total;
}

void Strategy::clip_gradients_value(torch::optim::Optimizer& optimizer, double clip_val) {
  precision_->unscale_gradients(optimizer);
  for (const auto& g : grads_of(optimizer)) g.detach().clamp_(-clip_val, clip_val);
}

Guard Strategy::tensor_init_context() { return precision_->tensor_init_context(); }

Guard Strategy::module_init_context(bool empty_init) { return precision_->module_init_context(); }

void Strategy::teardown() {
  if (precision_) precision_->teardown();
  if (accelerator_) accelerator_->teardown();
}

}  // namespace cppfabric::strategies
