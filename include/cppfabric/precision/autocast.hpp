// AutocastGuard: the RAII form of `torch.autocast`, which LibTorch lacks.
//
//   {
//     cppfabric::precision::AutocastGuard guard(c10::kCPU, at::kBFloat16);
//     auto y = linear(x);          // runs in bfloat16 where autocast's op policy says so
//   }                              // previous state restored; the weight-cast cache cleared
//   auto guard = fabric.autocast();   // the precision plugin's guard, as a cppfabric::Guard
//
// Guards nest. The outermost one clears autocast's cache of low-precision weight copies when
// it ends, so an optimizer step never leaves stale casts behind. Leave the guarded region
// before calling backward, as with torch.autocast.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

#include "cppfabric/guard.hpp"

namespace cppfabric::precision {

class AutocastGuard {
 public:
  /// `dtype` unset keeps the device's current autocast dtype (bfloat16 on CPU, float16 on CUDA).
  /// CUDA without a GPU, or an unsupported dtype, warns and disables autocast as torch does.
  explicit AutocastGuard(c10::DeviceType device_type,
                         std::optional<c10::ScalarType> dtype = std::nullopt, bool enabled = true,
                         std::optional<bool> cache_enabled = std::nullopt);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

  bool enabled() const { return enabled_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::DeviceType device_type() const { return device_type_; }

 private:
  c10::DeviceType device_type_;
  c10::ScalarType dtype_;
  bool enabled_;
  bool previous_cache_enabled_;
  bool previous_enabled_;
  c10::ScalarType previous_dtype_;
};

/// The same guard, held by a cppfabric::Guard.
Guard autocast(c10::DeviceType device_type, std::optional<c10::ScalarType> dtype = std::nullopt,
               bool enabled = true, std::optional<bool> cache_enabled = std::nullopt);

/// "cpu" or "cuda" (as in `MixedPrecision(..., device)`); std::invalid_argument otherwise.
c10::DeviceType autocast_device_type(const std::string& device);

/// Whether autocast is on for `device_type` in this thread, and its dtype.
bool is_autocast_enabled(c10::DeviceType device_type);
c10::ScalarType autocast_dtype(c10::DeviceType device_type);

}  // namespace cppfabric::precision
