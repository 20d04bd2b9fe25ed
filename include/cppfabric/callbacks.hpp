// Callback: objects Fabric notifies at fixed points, and `fabric.call(name, args...)` reaches.
//
//   struct CountSteps : cppfabric::Callback {
//     int steps = 0;
//     void on_after_optimizer_step(cppfabric::strategies::Strategy&,
//                                  torch::optim::Optimizer&) override {
//       ++steps;
//     }
//     void on_hook(std::string_view name, const cppfabric::HookArgs& args) override {
//       if (name == "on_epoch_end") fmt::print("epoch {}\n", args.get<int>(0));
//     }
//   };
//   Fabric fabric({.callbacks = {std::make_shared<CountSteps>()}});
//   fabric.call("on_epoch_end", 3);
#pragma once

#include <any>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "cppfabric/detail/fwd.hpp"

namespace cppfabric {

class Fabric;
namespace strategies {
class Strategy;
}

/// The arguments of a `fabric.call(...)`, each kept with its own type.
class HookArgs {
 public:
  explicit HookArgs(std::vector<std::any> args) : args_(std::move(args)) {}
  std::size_t size() const { return args_.size(); }
  /// The i-th argument as T; std::invalid_argument when out of range or of another type.
  template <typename T>
  const T& get(std::size_t i) const {
    check_index(i);
    if (const T* value = std::any_cast<T>(&args_[i])) return *value;
    throw_bad_type(i, typeid(T));
  }

 private:
  void check_index(std::size_t i) const;
  [[noreturn]] void throw_bad_type(std::size_t i, const std::type_info& wanted) const;
  std::vector<std::any> args_;
};

class Callback {
 public:
  virtual ~Callback() = default;
  /// After `fabric.setup(...)` (not `setup_module`), with the user's module.
  virtual void on_after_setup(Fabric& fabric, torch::nn::Module& module) {}
  /// After every FabricOptimizer::step().
  virtual void on_after_optimizer_step(strategies::Strategy& strategy,
                                       torch::optim::Optimizer& optimizer) {}
  /// Any hook invoked by name through `fabric.call(name, args...)`.
  virtual void on_hook(std::string_view name, const HookArgs& args) {}
};

}  // namespace cppfabric
