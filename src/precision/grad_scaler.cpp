#include "cppfabric/precision/grad_scaler.hpp"

#include <torch/torch.h>

#include <unordered_map>

#include "../utilities/cuda_graph.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/optim/fused.hpp"
#include "cppfabric/precision/autocast.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::precision {

namespace {
enum class Stage { Ready, Unscaled, Stepped };

struct DeviceHash {
  std::size_t operator()(const c10::Device& d) const { return std::hash<c10::Device>()(d); }
};

struct OptimizerState {
  Stage stage = Stage::Ready;
  std::unordered_map<c10::Device, at::Tensor, DeviceHash> found_inf_per_device;
};
}  // namespace

struct GradScaler::OptimizerStates {
  std::unordered_map<const torch::optim::Optimizer*, OptimizerState> by_optimizer;
};

GradScaler::GradScaler(std::string device, GradScalerOptions options)
    : device_(std::move(device)),
      enabled_(options.enabled),
      init_scale_(options.init_scale),
      growth_factor_(options.growth_factor),
      backoff_factor_(options.backoff_factor),
      growth_interval_(options.growth_interval),
      states_(std::make_unique<OptimizerStates>()) {
  autocast_device_type(device_);  // validates the name
  if (device_ == "cuda" && enabled_ && torch::cuda::device_count() == 0) {
    utilities::rank_zero_warn("GradScaler is enabled, but CUDA is not available. Disabling.");
    enabled_ = false;
  }
  if (enabled_) {
    if (growth_factor_ <= 1.0) {
      throw std::invalid_argument(
          fmt::format("The growth factor must be > 1.0, got growth_factor={}.", growth_factor_));
    }
    if (backoff_factor_ >= 1.0) {
      throw std::invalid_argument(
          fmt::format("The backoff factor must be < 1.0, got backoff_factor={}.", backoff_factor_));
    }
    if (growth_interval_ < 1) {
      throw std::invalid_argument(fmt::format(
          "The growth interval must be >= 1, got growth_interval={}.", growth_interval_));
    }
  }
}

GradScaler::~GradScaler() = default;

void GradScaler::lazy_init(const at::Tensor& like) {
  if (scale_.defined()) return;
  const auto options = torch::TensorOptions().device(like.device());
  scale_ = torch::full({}, init_scale_, options.dtype(torch::kFloat32));
  growth_tracker_ = torch::full({}, init_growth_tracker_, options.dtype(torch::kInt32));
}

at::Tensor GradScaler::scale(const at::Tensor& outputs) {
  if (!enabled_) return outputs;
  lazy_init(outputs);
  return outputs * scale_.to(outputs.device(), utilities::non_blocking_to(outputs.device()));
}

std::vector<at::Tensor> GradScaler::scale(const std::vector<at::Tensor>& outputs) {
  std::vector<at::Tensor> scaled;
  scaled.reserve(outputs.size());
  for (const auto& output : outputs) scaled.push_back(scale(output));
  return scaled;
}

void GradScaler::unscale_(torch::optim::Optimizer& optimizer) {
  if (!enabled_) return;
  if (!scale_.defined()) {
    throw std::runtime_error(
        "GradScaler.unscale_() was called before scale(): scale the loss (or call "
        "fabric.backward) first.");
  }
  auto& state = states_->by_optimizer[&optimizer];
  if (state.stage == Stage::Unscaled) {
    throw std::runtime_error(
        "unscale_() has already been called on this optimizer since the last update().");
  }
  if (state.stage == Stage::Stepped) {
    throw std::runtime_error("unscale_() is being called after step().");
  }
  // The reciprocal in float64, as torch does, so large scales stay exact.
  record_inf_checks(optimizer, scale_.to(torch::kFloat64).reciprocal().to(torch::kFloat32));
  state.stage = Stage::Unscaled;
}

void GradScaler::check_inf_(torch::optim::Optimizer& optimizer) {
  record_inf_checks(optimizer, torch::ones({}, scale_.options().dtype(torch::kFloat32)));
}

void GradScaler::record_inf_checks(torch::optim::Optimizer& optimizer,
                                   const at::Tensor& inv_scale) {
  auto& state = states_->by_optimizer[&optimizer];
  const auto found_inf = torch::zeros({}, scale_.options().dtype(torch::kFloat32));

  // Group gradients by device, then dtype: the foreach kernel needs one of each per call.
  std::unordered_map<c10::Device, std::map<c10::ScalarType, std::vector<at::Tensor>>, DeviceHash>
      grads;
  for (auto& group : optimizer.param_groups()) {
    for (auto& param : group.params()) {
      const auto& grad = param.grad();
      if (!grad.defined()) continue;
      if (grad.scalar_type() == torch::kHalf) {
        throw std::invalid_argument(
            "Attempting to unscale FP16 gradients. Keep the parameters in float32 with "
            "\"16-mixed\" (autocast makes float16 copies), or use \"16-true\" without a scaler.");
      }
      grads[grad.device()][grad.scalar_type()].push_back(grad.is_sparse() ? grad.coalesce() : grad);
    }
  }
  torch::NoGradGuard no_grad;
  std::unordered_map<c10::Device, at::Tensor, DeviceHash> found;
  for (auto& [device, by_dtype] : grads) {
    auto& device_found = found[device];
    if (!device_found.defined())
      device_found = found_inf.to(torch::TensorOptions().device(device).dtype(torch::kFloat32),
                                  utilities::non_blocking_to(device), /*copy=*/true);
    const auto device_inv = inv_scale.to(device, utilities::non_blocking_to(device));
    for (auto& [dtype, list] : by_dtype) {
      at::_amp_foreach_non_finite_check_and_unscale_(list, device_found, device_inv);
    }
  }
  state.found_inf_per_device = std::move(found);
}

bool GradScaler::step(torch::optim::Optimizer& optimizer) {
  if (!enabled_) {
    optimizer.step();
    return true;
  }
  if (!scale_.defined()) {
    throw std::runtime_error("GradScaler.step() was called before scale(): nothing was scaled.");
  }
  auto& state = states_->by_optimizer[&optimizer];
  if (state.stage == Stage::Stepped) {
    throw std::runtime_error("step() has already been called since the last update().");
  }
  if (auto* fused = dynamic_cast<optim::AmpScalingStep*>(&optimizer)) {
    // Python's `_step_supports_amp_scaling`: the optimizer unscales inside its kernel and skips
    // the update on inf/NaN, on the device; the host never reads the flag.
    at::Tensor grad_scale;
    if (state.stage == Stage::Ready) {
      check_inf_(optimizer);  // found_inf only, gradients left scaled
      grad_scale = scale_;
    }
    auto& checked = states_->by_optimizer[&optimizer];
    if (checked.found_inf_per_device.empty()) {
      throw std::runtime_error(
          "No inf checks were recorded for this optimizer: none of its parameters has a "
          "gradient. Run backward before step().");
    }
    at::Tensor found_inf;
    for (const auto& [device, flag] : checked.found_inf_per_device) {
      const auto here = flag.to(scale_.device(), utilities::non_blocking_to(scale_.device()));
      found_inf = found_inf.defined() ? found_inf + here : here;
    }
    fused->step_scaled(grad_scale, found_inf);
    checked.stage = Stage::Stepped;
    // Exact where the flag lives on the CPU; on a GPU reading it would be the sync we avoid.
    return found_inf.device().is_cpu() ? found_inf.item<double>() == 0.0 : true;
  }
  if (state.stage == Stage::Ready) unscale_(optimizer);
  auto& checked = states_->by_optimizer[&optimizer];
  if (checked.found_inf_per_device.empty()) {
    throw std::runtime_error(
        "No inf checks were recorded for this optimizer: none of its parameters has a gradient. "
        "Run backward before step().");
  }
  double found = 0.0;
  for (const auto& [device, flag] : checked.found_inf_per_device) found += flag.item<double>();
  const bool stepped = found == 0.0;
  if (stepped) optimizer.step();
  checked.stage = Stage::Stepped;
  return stepped;
}

void GradScaler::update(std::optional<double> new_scale) {
  if (!enabled_) return;
  if (!scale_.defined()) {
    throw std::runtime_error("GradScaler.update() was called before scale(): nothing was scaled.");
  }
  if (new_scale) {
    scale_.fill_(*new_scale);
  } else {
    std::vector<at::Tensor> found;
    for (const auto& [optimizer, state] : states_->by_optimizer) {
      for (const auto& [device, flag] : state.found_inf_per_device) {
        found.push_back(flag.to(scale_.device(), utilities::non_blocking_to(scale_.device())));
      }
    }
    if (found.empty()) {
      throw std::runtime_error(
          "No inf checks were recorded prior to update(): call step() (or unscale_()) on an "
          "optimizer first.");
    }
    at::Tensor combined = found.front().clone();
    for (std::size_t i = 1; i < found.size(); ++i) combined += found[i];
    at::_amp_update_scale_(scale_, growth_tracker_, combined, growth_factor_, backoff_factor_,
                           growth_interval_);
  }
  states_->by_optimizer.clear();
}

double GradScaler::get_scale() const {
  if (!enabled_) return 1.0;
  return scale_.defined() ? scale_.item<double>() : init_scale_;
}

int64_t GradScaler::growth_tracker_value() const {
  return growth_tracker_.defined() ? growth_tracker_.item<int64_t>() : init_growth_tracker_;
}

Value GradScaler::state_dict() const {
  if (!enabled_) return Value::dict();
  return Value::dict({{"scale", get_scale()},
                      {"growth_factor", growth_factor_},
                      {"backoff_factor", backoff_factor_},
                      {"growth_interval", growth_interval_},
                      {"_growth_tracker", growth_tracker_value()}});
}

void GradScaler::load_state_dict(const Value& state) {
  if (!enabled_) return;
  if (!state.is_dict()) {
    throw std::invalid_argument(fmt::format("A GradScaler state dict must be a dict, got a {}: {}",
                                            state.type_name(), state.repr()));
  }
  if (state.items().empty()) {
    throw std::runtime_error(
        "The source state dict is empty, possibly because it was saved from a disabled "
        "GradScaler.");
  }
  auto get = [&state](const char* key, bool integral) {
    const Value* value = state.find(Value(key));
    if (value == nullptr) {
      throw std::invalid_argument(
          fmt::format("GradScaler state dict lacks '{}'; expected keys: scale, growth_factor, "
                      "backoff_factor, growth_interval, _growth_tracker.",
                      key));
    }
    // torch writes Python numbers; a 0-dim tensor is accepted too (what the scale is in memory).
    if (value->kind() == Value::Kind::Tensor && value->to_tensor().defined() &&
        value->to_tensor().numel() == 1) {
      return value->to_tensor().item<double>();
    }
    const bool ok =
        value->kind() == Value::Kind::Int || (!integral && value->kind() == Value::Kind::Double);
    if (!ok) {
      throw std::invalid_argument(
          fmt::format("GradScaler state dict: '{}' must be {}, but it holds a {} ({})", key,
                      integral ? "an int" : "a float", value->type_name(), value->repr()));
    }
    return value->to_double();
  };
  const double scale = get("scale", false);
  const double growth_factor = get("growth_factor", false);
  const double backoff_factor = get("backoff_factor", false);
  const auto growth_interval = static_cast<int64_t>(get("growth_interval", true));
  const auto growth_tracker = static_cast<int64_t>(get("_growth_tracker", true));
  init_scale_ = scale;
  growth_factor_ = growth_factor;
  backoff_factor_ = backoff_factor;
  growth_interval_ = growth_interval;
  init_growth_tracker_ = growth_tracker;
  if (scale_.defined()) scale_.fill_(init_scale_);
  if (growth_tracker_.defined()) growth_tracker_.fill_(init_growth_tracker_);
}

}  // namespace cppfabric::precision
