// CUDAAccelerator: `devices` selects GPU indices, as in Python Fabric.
//
//   CUDAAccelerator::parse_gpu_ids(2, /*available=*/4)      -> {0, 1}
//   CUDAAccelerator::parse_gpu_ids("1,3", 4)                -> {1, 3}
//   CUDAAccelerator::parse_gpu_ids(-1, 4)                   -> {0, 1, 2, 3}
//
// The CUDA code paths compile everywhere; they run where a GPU is.
//
// setup_device() prints Python Fabric's TF32 hint once per process, on rank 0, when the device
// has tensor cores (compute capability 8.0 or later: Ampere, Hopper, ...) and float32 matmuls
// still run at torch's default precision "highest" (docs/precision.md):
//
//   CUDAAccelerator::needs_matmul_precision_hint(8, "highest")  -> true
//   CUDAAccelerator::needs_matmul_precision_hint(8, "high")     -> false
//   CUDAAccelerator::needs_matmul_precision_hint(7, "highest")  -> false (V100, T4)
#pragma once

#include "cppfabric/accelerators/accelerator.hpp"

namespace cppfabric::accelerators {

class CUDAAccelerator : public Accelerator {
 public:
  std::string name() const override { return "cuda"; }
  std::string class_name() const override { return "CUDAAccelerator"; }
  bool is_available() const override;
  int auto_device_count() const override;
  std::vector<c10::Device> parse_devices(const DevicesArg& devices) const override;
  void setup_device(const c10::Device& device) override;
  void teardown() override;

  /// Number of visible CUDA devices (0 without a GPU or without CUDA support in LibTorch).
  static int device_count();
  /// Python's `_parse_gpu_ids` against `available` visible GPUs (indices 0..available-1).
  static std::vector<int> parse_gpu_ids(const DevicesArg& devices, int available);

  /// Whether a device of compute capability `major`.x, with float32 matmul precision `precision`
  /// ("highest", "high" or "medium", as torch.get_float32_matmul_precision() names it), gets the
  /// TF32 hint: Python's `_check_cuda_matmul_precision` (capability >= 8 and "highest").
  static bool needs_matmul_precision_hint(int major, const std::string& precision);
  /// The hint's text for the device named `device_name`.
  static std::string matmul_precision_hint(const std::string& device_name);
  /// torch.get_float32_matmul_precision(): "highest", "high" or "medium".
  static std::string float32_matmul_precision();
};

}  // namespace cppfabric::accelerators
