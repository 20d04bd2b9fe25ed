// Accelerator: the hardware a Fabric runs on ("cpu" or "cuda").
//
//   auto acc = fabric.accelerator();           // std::shared_ptr<Accelerator>
//   acc->name();                               // "cpu"
//   acc->parse_devices(2);                     // how many / which devices `devices=2` selects
//
// Subclass it to plug in another device; pass the object as FabricOptions::accelerator.
#pragma once

#include <c10/core/Device.h>

#include <string>
#include <vector>

#include "cppfabric/options.hpp"

namespace cppfabric::accelerators {

class Accelerator {
 public:
  virtual ~Accelerator() = default;
  /// Registry name: "cpu", "cuda".
  virtual std::string name() const = 0;
  /// Class name used in messages, e.g. "CPUAccelerator".
  virtual std::string class_name() const = 0;
  virtual bool is_available() const = 0;
  virtual int auto_device_count() const = 0;
  /// Turns a `devices` value into the devices of this node; throws on invalid input.
  virtual std::vector<c10::Device> parse_devices(const DevicesArg& devices) const = 0;
  /// Makes `device` current for this process (CUDA: set the current device).
  virtual void setup_device(const c10::Device& device) = 0;
  virtual void teardown() {}
};

}  // namespace cppfabric::accelerators
