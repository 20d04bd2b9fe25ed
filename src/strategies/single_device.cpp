#include "cppfabric/strategies/single_device.hpp"

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/strategies/registry.hpp"

namespace cppfabric::strategies {

void SingleDeviceStrategy::register_strategies(StrategyRegistry& registry) {
  registry.register_strategy(
      "single_device", [] { return std::make_shared<SingleDeviceStrategy>(); },
      "One process, one device (what strategy='auto' picks for a single device)");
}

void SingleDeviceStrategy::set_parallel_devices(std::vector<c10::Device> devices) {
  if (devices.size() > 1) {
    throw std::invalid_argument(fmt::format(
        "strategy='single_device' runs on one device, but {} devices were selected. Use devices=1, "
        "or strategy='ddp' for several devices.",
        devices.size()));
  }
  if (!devices.empty()) device_ = devices.front();
  Strategy::set_parallel_devices(std::move(devices));
}

}  // namespace cppfabric::strategies
