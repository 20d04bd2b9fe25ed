// Precision: how a Fabric casts modules, inputs and outputs, runs backward and steps optimizers.
//
//   Fabric fabric({.precision = "64-true"});
//   auto guard = fabric.autocast();              // the plugin's forward context
//
// The base class is `32-true` (everything float32, nothing changes). Subclasses override the
// hooks they need; `precision::DoublePrecision` is `64-true`. Every plugin is a
// cppfabric::Stateful: its state_dict() is Python's Precision.state_dict() -- an empty dict, or
// the GradScaler's state under "16-mixed" -- so `{"precision", fabric.strategy()->precision()}`
// checkpoints it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/guard.hpp"
#include "cppfabric/plugins.hpp"
#include "cppfabric/stateful.hpp"

namespace cppfabric::precision {

class Precision : public Plugin, public Stateful {
 public:
  /// The precision string this plugin implements, e.g. "32-true".
  virtual std::string name() const { return "32-true"; }
  std::string describe() const override;

  /// Casts the module's parameters and buffers (identity for 32-true).
  virtual void convert_module(torch::nn::Module& module);
  /// Active while the module's forward runs (autocast, default dtype, ...).
  virtual Guard forward_context();
  /// Active while `fabric.init_tensor()` / `fabric.init_module()` are held.
  virtual Guard tensor_init_context();
  virtual Guard module_init_context();
  /// Casts a floating-point input to the compute dtype (identity for 32-true).
  virtual at::Tensor convert_input(const at::Tensor& tensor);
  /// Casts a floating-point output back to the default dtype (identity for 32-true).
  virtual at::Tensor convert_output(const at::Tensor& tensor);

  virtual void pre_backward(const at::Tensor& tensor) {}
  /// Runs backward on `tensor` (the arguments of at::Tensor::backward).
  virtual void backward(const at::Tensor& tensor, const at::Tensor& gradient,
                        std::optional<bool> retain_graph, bool create_graph);
  virtual void post_backward(const at::Tensor& tensor) {}
  /// True when this plugin changes backward, so a bare `loss.backward()` would be wrong and
  /// FabricModule outputs refuse it.
  virtual bool requires_fabric_backward() const { return false; }

  virtual void optimizer_step(torch::optim::Optimizer& optimizer);
  /// Undoes loss scaling on the optimizer's gradients (no-op without a scaler).
  virtual void unscale_gradients(torch::optim::Optimizer& optimizer) {}
  virtual void teardown() {}

  /// The plugin's state for checkpoints: an empty dict here (the GradScaler's under 16-mixed).
  Value state_dict() const override { return Value::dict(); }
  void load_state_dict(const Value& state) override {}
  std::string kind() const override { return "precision plugin"; }
};

/// A "true" precision: the module, its inputs and the default dtype inside Fabric's contexts
/// all use one floating dtype; outputs are cast back to the default dtype.
class DtypePrecision : public Precision {
 public:
  DtypePrecision(c10::ScalarType dtype, std::string name);
  std::string name() const override { return name_; }
  c10::ScalarType dtype() const { return dtype_; }
  void convert_module(torch::nn::Module& module) override;
  Guard forward_context() override;
  Guard tensor_init_context() override;
  Guard module_init_context() override;
  at::Tensor convert_input(const at::Tensor& tensor) override;
  at::Tensor convert_output(const at::Tensor& tensor) override;

 private:
  c10::ScalarType dtype_;
  std::string name_;
};

/// Casts a floating-point tensor to `dtype`; other tensors pass through.
at::Tensor cast_floating(const at::Tensor& tensor, c10::ScalarType dtype);

/// Sets the default floating dtype until the guard goes away.
Guard default_dtype_guard(c10::ScalarType dtype);

}  // namespace cppfabric::precision
