// Private: the `initial_lr` that Python keeps inside each param group, which cppfabric's LR
// schedulers keep beside LibTorch's groups (src/optim/lr_scheduler.cpp). Checkpoints read and
// write it so that files carry Python's param-group keys.
#pragma once

#include <optional>

namespace torch::optim {
class OptimizerParamGroup;
}

namespace cppfabric::optim::detail {

/// The group's initial_lr, if a scheduler recorded one.
std::optional<double> initial_lr(const torch::optim::OptimizerParamGroup& group);
/// group["initial_lr"] = value.
void set_initial_lr(const torch::optim::OptimizerParamGroup& group, double value);

}  // namespace cppfabric::optim::detail
