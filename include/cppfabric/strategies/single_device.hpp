// SingleDeviceStrategy: one process, one device. Chosen by `strategy="auto"` when one device is
// selected; also by name, "single_device".
//
//   Fabric fabric({.accelerator = "cpu", .strategy = "single_device"});
#pragma once

#include "cppfabric/strategies/strategy.hpp"

namespace cppfabric::strategies {

class SingleDeviceStrategy : public Strategy {
 public:
  explicit SingleDeviceStrategy(c10::Device device = c10::Device(c10::kCPU)) : device_(device) {}
  /// Registers "single_device" (Python has no name for it; cppfabric does).
  static void register_strategies(StrategyRegistry& registry);
  std::string name() const override { return "single_device"; }
  c10::Device root_device() const override { return device_; }
  void set_parallel_devices(std::vector<c10::Device> devices) override;

 private:
  c10::Device device_;
};

}  // namespace cppfabric::strategies
