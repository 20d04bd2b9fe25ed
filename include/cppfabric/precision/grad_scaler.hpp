// GradScaler: dynamic loss scaling for float16 training, as `torch.amp.GradScaler`.
//
//   auto scaler = std::make_shared<cppfabric::precision::GradScaler>("cuda");
//   fabric.backward(loss);                 // with "16-mixed", Fabric scales the loss ...
//   opt.step();                            // ... and calls scaler.step(opt) + scaler.update()
//
//   // by hand:
//   scaler.scale(loss).backward();
//   scaler.unscale_(optimizer);            // optional, e.g. before clipping; once per step
//   scaler.step(optimizer);                // skipped when a gradient is inf or NaN
//   scaler.update();                       // back off on overflow, grow after clean steps
//
// Defaults are torch's: init_scale 65536, growth x2 every 2000 clean steps, backoff x0.5.
// A GradScaler is a cppfabric::Stateful; state_dict() is torch's: {"scale": float,
// "growth_factor": float, "backoff_factor": float, "growth_interval": int, "_growth_tracker": int}
// (an empty dict when disabled).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/stateful.hpp"

namespace cppfabric::precision {

struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  bool enabled = true;
};

class GradScaler : public Stateful {
 public:
  /// `device` is "cuda" (the default, as in torch) or "cpu". A "cuda" scaler without a GPU
  /// warns and disables itself, as torch does.
  explicit GradScaler(std::string device = "cuda", GradScalerOptions options = {});
  ~GradScaler() override;
  GradScaler(const GradScaler&) = delete;
  GradScaler& operator=(const GradScaler&) = delete;

  /// `outputs * scale` (identity when disabled). Creates the scale on first use.
  at::Tensor scale(const at::Tensor& outputs);
  std::vector<at::Tensor> scale(const std::vector<at::Tensor>& outputs);
  /// Divides the optimizer's gradients by the scale and records inf/NaN. At most once per
  /// optimizer between update() calls.
  void unscale_(torch::optim::Optimizer& optimizer);
  /// Unscales if needed, then runs optimizer.step() unless a gradient was inf/NaN. Returns
  /// whether the optimizer stepped. Optimizers that take the scale themselves
  /// (cppfabric::optim::AdamW, Adam, SGD: optim::AmpScalingStep) get the scale and the inf flag
  /// as tensors and skip on the device, without a host sync; on a GPU this then returns true.
  bool step(torch::optim::Optimizer& optimizer);
  /// Updates the scale from this iteration's inf/NaN checks (or sets `new_scale`).
  void update(std::optional<double> new_scale = std::nullopt);

  double get_scale() const;
  double get_growth_factor() const { return growth_factor_; }
  void set_growth_factor(double value) { growth_factor_ = value; }
  double get_backoff_factor() const { return backoff_factor_; }
  void set_backoff_factor(double value) { backoff_factor_ = value; }
  int64_t get_growth_interval() const { return growth_interval_; }
  void set_growth_interval(int64_t value) { growth_interval_ = value; }
  bool is_enabled() const { return enabled_; }
  const std::string& device() const { return device_; }

  /// Python's keys: scale, growth_factor, backoff_factor, growth_interval, _growth_tracker
  /// (an empty dict when disabled).
  Value state_dict() const override;
  /// Restores the keys above (std::invalid_argument names a missing or ill-typed one); an empty
  /// dict throws std::runtime_error, as torch does. A disabled scaler ignores the call.
  void load_state_dict(const Value& state) override;
  std::string kind() const override { return "precision plugin"; }

 private:
  void lazy_init(const at::Tensor& like);
  /// Records inf/NaN per device, dividing the gradients by `inv_scale` on the way.
  void record_inf_checks(torch::optim::Optimizer& optimizer, const at::Tensor& inv_scale);
  /// Records inf/NaN without changing the gradients (for AmpScalingStep optimizers).
  void check_inf_(torch::optim::Optimizer& optimizer);
  int64_t growth_tracker_value() const;

  std::string device_;
  bool enabled_;
  double init_scale_;
  double growth_factor_;
  double backoff_factor_;
  int64_t growth_interval_;
  int64_t init_growth_tracker_ = 0;
  at::Tensor scale_;           // float32, 0-dim
  at::Tensor growth_tracker_;  // int32, 0-dim
  struct OptimizerStates;
  std::unique_ptr<OptimizerStates> states_;
};

}  // namespace cppfabric::precision
