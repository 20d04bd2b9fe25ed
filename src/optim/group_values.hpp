// Private: the numbers Python's LR schedulers keep inside each param group -- `initial_lr` (every
// scheduler) and OneCycleLR's `max_lr`, `min_lr`, `max_momentum`, `base_momentum`. LibTorch's
// param groups cannot hold extra keys, so cppfabric keeps them beside each group
// (src/optim/lr_scheduler.cpp). Checkpoints write them into the group's dict and read them back
// (src/checkpoint/adapters.cpp), so files carry Python's param-group keys.
//
//   set_group_value(group, "max_lr", 0.1);
//   double max_lr = group_value(group, "max_lr").value();
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace torch::optim {
class OptimizerParamGroup;
}

namespace cppfabric::optim::detail {

/// The keys schedulers add to a param group, in the order Python's OneCycleLR adds them.
const std::vector<std::string>& scheduler_group_keys();
/// group[key], if a scheduler (or a loaded checkpoint) set it.
std::optional<double> group_value(const torch::optim::OptimizerParamGroup& group,
                                  const std::string& key);
/// group[key] = value (a new key goes last, an existing one keeps its place).
void set_group_value(const torch::optim::OptimizerParamGroup& group, const std::string& key,
                     double value);
/// Every key set on the group, in the order first set (Python's dict order).
std::vector<std::pair<std::string, double>> group_values(
    const torch::optim::OptimizerParamGroup& group);

}  // namespace cppfabric::optim::detail
