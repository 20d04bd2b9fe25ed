#include "cppfabric/precision/mixed.hpp"

#include <torch/torch.h>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/precision/autocast.hpp"
#include "cppfabric/utilities/errors.hpp"

namespace cppfabric::precision {

MixedPrecision::MixedPrecision(const std::string& precision, const std::string& device,
                               std::shared_ptr<GradScaler> scaler)
    : precision_(precision), device_(device), scaler_(std::move(scaler)) {
  if (precision_ != "16-mixed" && precision_ != "bf16-mixed") {
    throw std::invalid_argument(fmt::format(
        "Passed `MixedPrecision(precision='{}')`. Precision must be '16-mixed' or 'bf16-mixed'.",
        precision_));
  }
  device_type_ = autocast_device_type(device_);
  if (!scaler_ && precision_ == "16-mixed") scaler_ = std::make_shared<GradScaler>(device_);
  if (scaler_ && precision_ == "bf16-mixed") {
    throw std::invalid_argument(
        "`precision='bf16-mixed'` does not use a scaler, found a GradScaler. Remove the scaler, "
        "or use '16-mixed'.");
  }
  dtype_ = precision_ == "bf16-mixed" ? c10::kBFloat16 : c10::kHalf;
}

Guard MixedPrecision::forward_context() { return autocast(device_type_, dtype_); }

at::Tensor MixedPrecision::convert_input(const at::Tensor& tensor) {
  return cast_floating(tensor, dtype_);
}

at::Tensor MixedPrecision::convert_output(const at::Tensor& tensor) {
  return cast_floating(tensor, c10::get_default_dtype_as_scalartype());
}

void MixedPrecision::backward(const at::Tensor& tensor, const at::Tensor& gradient,
                              std::optional<bool> retain_graph, bool create_graph) {
  Precision::backward(scaler_ ? scaler_->scale(tensor) : tensor, gradient, retain_graph,
                      create_graph);
}

void MixedPrecision::optimizer_step(torch::optim::Optimizer& optimizer) {
  if (!scaler_) return Precision::optimizer_step(optimizer);
  if (dynamic_cast<torch::optim::LBFGS*>(&optimizer) != nullptr) {
    throw TypeError("AMP and the LBFGS optimizer are not compatible.");
  }
  scaler_->step(optimizer);
  scaler_->update();
}

void MixedPrecision::unscale_gradients(torch::optim::Optimizer& optimizer) {
  if (scaler_) scaler_->unscale_(optimizer);
}

Value MixedPrecision::state_dict() const { return scaler_ ? scaler_->state_dict() : Value::dict(); }

void MixedPrecision::load_state_dict(const Value& state) {
  if (scaler_) scaler_->load_state_dict(state);
}

}  // namespace cppfabric::precision
