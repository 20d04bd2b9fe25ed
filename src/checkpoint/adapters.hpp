// Private: the Stateful adapters that give LibTorch's modules and optimizers Python's
// state-dict layout (the public factories detail::module_stateful / optimizer_stateful in
// state.hpp return these):
//   module     -> OrderedDict {name: tensor}, parameters then buffers, no wrapper prefix
//   optimizer  -> {"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}
//                 with torch 2.11's keys, plus the keys Python's schedulers keep in each group
//                 (initial_lr, OneCycleLR's max_lr ...; src/optim/group_values.hpp)
//
//   checkpoint::ModuleStateful module(net.ptr());
//   Value state = module.state_dict();
//   module.load_state_dict(state, /*strict=*/true);
#pragma once

#include <memory>
#include <string>

#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/stateful.hpp"

namespace cppfabric::checkpoint {

/// A module's parameters and buffers by name. load_state_dict checks names (when strict),
/// shapes and dtypes, and reports every mismatch at once, as Python's load_state_dict does.
class ModuleStateful final : public Stateful {
 public:
  explicit ModuleStateful(std::shared_ptr<torch::nn::Module> module);
  std::string kind() const override { return "module"; }
  Value state_dict() const override;
  void load_state_dict(const Value& state) override { load_state_dict(state, true); }
  void load_state_dict(const Value& state, bool strict) override;
  torch::nn::Module& module() const { return *module_; }

 private:
  std::shared_ptr<torch::nn::Module> module_;
};

/// One of LibTorch's SGD, Adam, AdamW, Adagrad or RMSprop (others throw std::invalid_argument
/// on construction) in Python's optimizer.state_dict() layout. Parameters are numbered across
/// the param groups in order, as Python numbers them.
class OptimizerStateful final : public Stateful {
 public:
  enum class Type { SGD, Adam, AdamW, Adagrad, RMSprop };

  explicit OptimizerStateful(std::shared_ptr<torch::optim::Optimizer> optimizer);
  std::string kind() const override { return "optimizer"; }
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;
  torch::optim::Optimizer& optimizer() const { return *optimizer_; }
  Type type() const { return type_; }

 private:
  std::shared_ptr<torch::optim::Optimizer> optimizer_;
  Type type_;
};

}  // namespace cppfabric::checkpoint
