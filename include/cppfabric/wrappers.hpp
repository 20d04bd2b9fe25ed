// FabricModule<M> and FabricOptimizer: what `fabric.setup(...)` returns.
//
//   auto [net, opt] = fabric.setup(model, optimizer);
//   auto out = net(x);            // forward through the precision/strategy contexts
//   net->fc1;                     // the user's module
//   net.train(); net.eval();
//   opt.zero_grad();
//   fabric.backward(loss);
//   opt.step();                   // routed through precision and strategy, then callbacks
//
//   // A method other than forward (Python's mark_forward_method): the same precision contexts,
//   // input/output casting and DDP buffer broadcast as net(x).
//   auto z = net.call(&NetImpl::encode, x);
//   auto y = net.call([](NetImpl& m, const at::Tensor& x) { return m.decode(m.encode(x)); }, x);
//
//   net.device(); net.dtype();    // where the parameters are now (also after net.to(...))
//   net.load_state_dict(state);   // a Value dict (fabric.load's) or net.state_dict()
//   auto loss = opt.step([&] { opt.zero_grad(); auto l = loss_fn(net(x)); fabric.backward(l);
//                              return l; });               // LBFGS and friends
//   cppfabric::Value s = opt.state_dict();                    // Python's layout
//
// Both are cheap handles (shared ownership); copies refer to the same module/optimizer.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/guard.hpp"
#include "cppfabric/value.hpp"

namespace cppfabric {

class Callback;

/// What FabricModule::load_state_dict reports (Python's _IncompatibleKeys). With strict, any
/// missing or unexpected key throws instead.
struct LoadStateDictResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

namespace strategies {
class Strategy;
}

/// The non-template part of FabricModule: strategy wiring and precision conversions.
class FabricModuleBase {
 public:
  FabricModuleBase(std::shared_ptr<torch::nn::Module> original,
                   std::shared_ptr<torch::nn::Module> forward_module,
                   std::shared_ptr<strategies::Strategy> strategy, c10::Device device);

  /// The user's module, as a torch::nn::Module.
  torch::nn::Module& base_module() const { return *original_; }
  const std::shared_ptr<torch::nn::Module>& base_module_ptr() const { return original_; }
  /// The module the strategy runs (the same object for single-device and DDP).
  const std::shared_ptr<torch::nn::Module>& forward_module() const { return forward_module_; }
  const std::shared_ptr<strategies::Strategy>& strategy() const { return strategy_; }
  /// Where the module's parameters are now: the first parameter's (or buffer's) device, so it
  /// stays right after to(); the device chosen at setup for a module without any.
  c10::Device device() const;
  /// The dtype of the first floating-point parameter (or buffer); the default dtype without any
  /// (Python's _DeviceDtypeModuleMixin.dtype).
  c10::ScalarType dtype() const;
  /// Moves / casts the module (Python's FabricModule.to()).
  void to(c10::Device device);
  void to(c10::ScalarType dtype);

  /// Loads a state dict (name -> tensor, no wrapper prefix) into the module: a Value dict as
  /// fabric.load and checkpoint::load_torch_file return it. With strict, missing or unexpected
  /// keys throw std::runtime_error naming them (as Python's RuntimeError); shapes and dtypes are
  /// always checked.
  LoadStateDictResult load_state_dict(const Value& state, bool strict = true);
  /// The same from state_dict()'s OrderedDict, a std::map<std::string, at::Tensor> or any
  /// range of (name, tensor) items.
  template <typename Dict>
  requires(!std::is_convertible_v<const Dict&, const Value&>) LoadStateDictResult
      load_state_dict(const Dict& state, bool strict = true) {
    Value::Items items;
    for (const auto& item : state) {
      if constexpr (requires { item.key(); }) {
        items.emplace_back(Value(item.key()), Value(item.value()));
      } else {
        items.emplace_back(Value(item.first), Value(item.second));
      }
    }
    return load_state_dict(Value::dict(std::move(items), /*ordered=*/true), strict);
  }

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const;

 protected:
  /// Enters the precision's and the strategy's forward contexts.
  Guard begin_forward() const;
  at::Tensor convert_input(const at::Tensor& tensor) const;
  /// Casts an output back and, where fabric.backward is required, guards against loss.backward().
  at::Tensor finish_output(const at::Tensor& tensor) const;

  template <typename T>
  decltype(auto) convert_arg(T&& arg) const {
    if constexpr (std::is_same_v<std::decay_t<T>, at::Tensor>) {
      return convert_input(arg);
    } else {
      return std::forward<T>(arg);
    }
  }
  template <typename T>
  T convert_result(T&& out) const {
    using D = std::decay_t<T>;
    if constexpr (std::is_same_v<D, at::Tensor>) {
      return finish_output(out);
    } else if constexpr (requires { std::tuple_size<D>::value; }) {
      std::apply([this](auto&... items) { ((items = convert_result(std::move(items))), ...); },
                 out);
      return std::forward<T>(out);
    } else if constexpr (std::is_same_v<D, std::vector<at::Tensor>>) {
      for (auto& item : out) item = finish_output(item);
      return std::forward<T>(out);
    } else {
      return std::forward<T>(out);
    }
  }

 private:
  std::shared_ptr<torch::nn::Module> original_;
  std::shared_ptr<torch::nn::Module> forward_module_;
  std::shared_ptr<strategies::Strategy> strategy_;
  c10::Device device_;
};

/// A set-up module: call it like the module, reach the module with `->`.
template <typename M>
class FabricModule : public FabricModuleBase {
 public:
  using ModuleType = M;
  FabricModule(std::shared_ptr<M> module, std::shared_ptr<torch::nn::Module> forward_module,
               std::shared_ptr<strategies::Strategy> strategy, c10::Device device)
      : FabricModuleBase(module, std::move(forward_module), std::move(strategy), device),
        module_(std::move(module)) {}

  /// Runs another method of the module as forward runs (Python's mark_forward_method): `fn` is
  /// a member function pointer of M (`&NetImpl::encode`) or a callable taking M&; tensor
  /// arguments are converted for the precision, the precision's and strategy's forward contexts
  /// are entered (autocast, DDP buffer broadcast), and tensor outputs are cast back.
  template <typename F, typename... Args>
  auto call(F&& fn, Args&&... args) const {
    auto result = [&] {
      Guard context = begin_forward();
      return std::invoke(std::forward<F>(fn), *module_, convert_arg(std::forward<Args>(args))...);
    }();
    return convert_result(std::move(result));
  }

  /// Runs M::forward with inputs converted for the precision, inside its forward context, and
  /// outputs cast back to the default dtype.
  template <typename... Args>
  auto operator()(Args&&... args) const {
    auto result = [&] {
      Guard context = begin_forward();
      return module_->forward(convert_arg(std::forward<Args>(args))...);
    }();
    return convert_result(std::move(result));
  }

  M* operator->() const { return module_.get(); }
  M& operator*() const { return *module_; }
  /// The user's module (Python's `.module`).
  const std::shared_ptr<M>& module() const { return module_; }

  auto parameters(bool recurse = true) const { return module_->parameters(recurse); }
  auto named_parameters(bool recurse = true) const { return module_->named_parameters(recurse); }
  auto buffers(bool recurse = true) const { return module_->buffers(recurse); }
  auto named_buffers(bool recurse = true) const { return module_->named_buffers(recurse); }
  /// Parameters and buffers by name, without any wrapper prefix (Python's state_dict()).
  auto state_dict() const {
    auto state = module_->named_parameters(true);
    for (const auto& item : module_->named_buffers(true)) state.insert(item.key(), item.value());
    return state;
  }

 private:
  std::shared_ptr<M> module_;
};

/// A set-up optimizer: step() goes through the precision plugin and the strategy.
class FabricOptimizer {
 public:
  FabricOptimizer(std::shared_ptr<torch::optim::Optimizer> optimizer,
                  std::shared_ptr<strategies::Strategy> strategy,
                  std::shared_ptr<const std::vector<std::shared_ptr<Callback>>> callbacks);

  void step();
  /// Python's step(closure): runs `closure` (with gradients enabled; it usually zeroes the
  /// gradients, runs forward and calls fabric.backward) and steps; returns the closure's loss.
  /// LBFGS evaluates the closure as often as it needs. Not with a GradScaler ("16-mixed"), as in
  /// PyTorch.
  at::Tensor step(const std::function<at::Tensor()>& closure);
  void zero_grad(bool set_to_none = true);
  /// The optimizer's state in Python's layout ({"state": ..., "param_groups": ...}); SGD, Adam,
  /// AdamW, Adagrad and RMSprop (others throw std::invalid_argument).
  Value state_dict() const;
  void load_state_dict(const Value& state);
  std::vector<torch::optim::OptimizerParamGroup>& param_groups() const;

  torch::optim::Optimizer& optimizer() const { return *optimizer_; }
  const std::shared_ptr<torch::optim::Optimizer>& optimizer_ptr() const { return optimizer_; }
  torch::optim::Optimizer* operator->() const { return optimizer_.get(); }

 private:
  std::shared_ptr<torch::optim::Optimizer> optimizer_;
  std::shared_ptr<strategies::Strategy> strategy_;
  std::shared_ptr<const std::vector<std::shared_ptr<Callback>>> callbacks_;
};

}  // namespace cppfabric
