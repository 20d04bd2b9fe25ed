// CUDAAccelerator: `devices` selects GPU indices, as in Python Fabric.
//
//   CUDAAccelerator::parse_gpu_ids(2, /*available=*/4)      -> {0, 1}
//   CUDAAccelerator::parse_gpu_ids("1,3", 4)                -> {1, 3}
//   CUDAAccelerator::parse_gpu_ids(-1, 4)                   -> {0, 1, 2, 3}
//
// The CUDA code paths compile everywhere; they run where a GPU is.
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
};

}  // namespace cppfabric::accelerators
