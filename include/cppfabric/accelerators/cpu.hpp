// CPUAccelerator: `devices` is a number of processes (an int > 0 or a digit string).
//
//   CPUAccelerator cpu;
//   cpu.parse_devices(4);   // four "cpu" devices, one per process
#pragma once

#include "cppfabric/accelerators/accelerator.hpp"

namespace cppfabric::accelerators {

class CPUAccelerator : public Accelerator {
 public:
  std::string name() const override { return "cpu"; }
  std::string class_name() const override { return "CPUAccelerator"; }
  bool is_available() const override { return true; }
  int auto_device_count() const override { return 1; }
  std::vector<c10::Device> parse_devices(const DevicesArg& devices) const override;
  void setup_device(const c10::Device& device) override;

  /// The number of processes `devices` asks for; TypeError unless it is an int > 0.
  static int parse_cpu_cores(const DevicesArg& devices);
};

}  // namespace cppfabric::accelerators
