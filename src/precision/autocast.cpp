#include "cppfabric/precision/autocast.hpp"

#include <ATen/autocast_mode.h>
#include <torch/cuda.h>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::precision {

// LibTorch's autocast API changed names over time (device-specific setters before 2.4,
// device-typed ones since). cppfabric needs >= 2.11, so this is the one place that would grow
// a version switch again.
namespace compat {
bool enabled(c10::DeviceType device) { return at::autocast::is_autocast_enabled(device); }
void set_enabled(c10::DeviceType device, bool on) {
  at::autocast::set_autocast_enabled(device, on);
}
c10::ScalarType dtype(c10::DeviceType device) { return at::autocast::get_autocast_dtype(device); }
void set_dtype(c10::DeviceType device, c10::ScalarType t) {
  at::autocast::set_autocast_dtype(device, t);
}
}  // namespace compat

c10::DeviceType autocast_device_type(const std::string& device) {
  if (device == "cpu") return c10::kCPU;
  if (device == "cuda") return c10::kCUDA;
  throw std::invalid_argument(
      fmt::format("Unsupported autocast device_type '{}'. Valid choices: 'cpu', 'cuda'.", device));
}

bool is_autocast_enabled(c10::DeviceType device_type) { return compat::enabled(device_type); }
c10::ScalarType autocast_dtype(c10::DeviceType device_type) { return compat::dtype(device_type); }

AutocastGuard::AutocastGuard(c10::DeviceType device_type, std::optional<c10::ScalarType> dtype,
                             bool enabled, std::optional<bool> cache_enabled)
    : device_type_(device_type),
      dtype_(dtype.value_or(compat::dtype(device_type))),
      enabled_(enabled) {
  if (device_type_ != c10::kCPU && device_type_ != c10::kCUDA) {
    throw std::invalid_argument(
        fmt::format("Unsupported autocast device_type '{}'. Valid choices: 'cpu', 'cuda'.",
                    c10::DeviceTypeName(device_type_, /*lower_case=*/true)));
  }
  if (enabled_) {
    if (device_type_ == c10::kCUDA && torch::cuda::device_count() == 0) {
      utilities::rank_zero_warn("CUDA is not available. Disabling autocast.");
      enabled_ = false;
    } else if (dtype_ != c10::kBFloat16 && dtype_ != c10::kHalf) {
      utilities::rank_zero_warn(fmt::format(
          "In {} autocast, but the target dtype {} is not supported. Disabling autocast. "
          "Autocast supports torch.bfloat16 and torch.float16.",
          c10::DeviceTypeName(device_type_), c10::toString(dtype_)));
      enabled_ = false;
    }
  }
  previous_cache_enabled_ = at::autocast::is_autocast_cache_enabled();
  previous_enabled_ = compat::enabled(device_type_);
  previous_dtype_ = compat::dtype(device_type_);
  compat::set_enabled(device_type_, enabled_);
  compat::set_dtype(device_type_, dtype_);
  at::autocast::increment_nesting();
  at::autocast::set_autocast_cache_enabled(cache_enabled.value_or(previous_cache_enabled_));
}

AutocastGuard::~AutocastGuard() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  compat::set_enabled(device_type_, previous_enabled_);
  compat::set_dtype(device_type_, previous_dtype_);
  at::autocast::set_autocast_cache_enabled(previous_cache_enabled_);
}

Guard autocast(c10::DeviceType device_type, std::optional<c10::ScalarType> dtype, bool enabled,
               std::optional<bool> cache_enabled) {
  auto guard = std::make_shared<AutocastGuard>(device_type, dtype, enabled, cache_enabled);
  return Guard([guard]() mutable { guard.reset(); });
}

}  // namespace cppfabric::precision
