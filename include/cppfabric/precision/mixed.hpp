// MixedPrecision (`16-mixed`, `bf16-mixed`): weights stay float32, the forward runs under
// autocast, inputs are cast to the low-precision dtype and outputs back to float32. `16-mixed`
// scales the loss with a GradScaler; `bf16-mixed` needs none. Either way, call
// `fabric.backward(loss)`: a bare `loss.backward()` on a FabricModule output raises.
//
//   Fabric fabric({.precision = "16-mixed"});               // GradScaler("cuda") made for you
//   auto scaler = std::make_shared<GradScaler>("cuda", GradScalerOptions{.init_scale = 1024});
//   Fabric custom({.plugins = {std::make_shared<MixedPrecision>("16-mixed", "cuda", scaler)}});
#pragma once

#include <memory>

#include "cppfabric/precision/grad_scaler.hpp"
#include "cppfabric/precision/precision.hpp"

namespace cppfabric::precision {

class MixedPrecision : public Precision {
 public:
  /// `precision` is "16-mixed" or "bf16-mixed"; `device` is the autocast device ("cpu" or
  /// "cuda"). "16-mixed" without a scaler gets GradScaler(device); "bf16-mixed" rejects one.
  MixedPrecision(const std::string& precision, const std::string& device,
                 std::shared_ptr<GradScaler> scaler = nullptr);

  std::string name() const override { return precision_; }
  Guard forward_context() override;
  at::Tensor convert_input(const at::Tensor& tensor) override;
  at::Tensor convert_output(const at::Tensor& tensor) override;
  void backward(const at::Tensor& tensor, const at::Tensor& gradient,
                std::optional<bool> retain_graph, bool create_graph) override;
  bool requires_fabric_backward() const override { return true; }
  void optimizer_step(torch::optim::Optimizer& optimizer) override;
  void unscale_gradients(torch::optim::Optimizer& optimizer) override;
  /// The scaler's state_dict() ("16-mixed"), or an empty dict ("bf16-mixed"), as in Python.
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

  const std::shared_ptr<GradScaler>& scaler() const { return scaler_; }
  const std::string& device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }

 private:
  std::string precision_;
  std::string device_;
  c10::DeviceType device_type_;
  c10::ScalarType dtype_;
  std::shared_ptr<GradScaler> scaler_;
};

}  // namespace cppfabric::precision
