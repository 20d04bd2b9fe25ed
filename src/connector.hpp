// The connector: turns FabricOptions (plus LT_* environment overrides) into concrete objects,
// once, following Python Fabric's resolution order and errors. Private to the library.
#pragma once

#include <c10/core/Device.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/options.hpp"

namespace cppfabric::accelerators {
class Accelerator;
}
namespace cppfabric::precision {
class Precision;
}
namespace cppfabric::environments {
class ClusterEnvironment;
}
namespace cppfabric::checkpoint {
class CheckpointIO;
}

namespace cppfabric::detail {

/// Whether `cppfabric run` started this process (LT_CLI_USED, 0 or 1).
bool using_cli();
/// The precision strings `precision=` accepts: canonical ones, then the legacy aliases.
const std::vector<std::string>& precision_choices();
/// Canonical precision strings, then legacy aliases, in Python's order.
std::optional<std::string> convert_precision(const PrecisionArg& precision);

class Connector {
 public:
  explicit Connector(FabricOptions options);

  std::shared_ptr<accelerators::Accelerator> accelerator;
  std::shared_ptr<strategies::Strategy> strategy;
  std::shared_ptr<precision::Precision> precision;
  std::shared_ptr<environments::ClusterEnvironment> cluster_environment;
  std::shared_ptr<checkpoint::CheckpointIO> checkpoint_io;
  std::vector<c10::Device> parallel_devices;
  int num_nodes = 1;

 private:
  void apply_env_overrides(FabricOptions& options);
  void check_config(const FabricOptions& options);
  void check_device_config(const FabricOptions& options);
  void init_accelerator(const FabricOptions& options);
  void choose_strategy();
  void init_precision();
  void wire_strategy();

  std::string strategy_flag_;  // empty when a Strategy object was passed
  std::shared_ptr<strategies::Strategy> strategy_object_;
  std::string accelerator_flag_;  // empty when an Accelerator object was passed
  std::shared_ptr<accelerators::Accelerator> accelerator_object_;
  std::string precision_input_ = "32-true";
  std::shared_ptr<precision::Precision> precision_instance_;
  DevicesArg devices_flag_;
};

}  // namespace cppfabric::detail
