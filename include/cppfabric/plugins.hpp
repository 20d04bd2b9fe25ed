// Plugin: the common base of everything `FabricOptions::plugins` accepts.
//
//   Fabric fabric({.plugins = {std::make_shared<cppfabric::precision::DoublePrecision>()}});
//
// Fabric accepts at most one plugin of each kind: a precision plugin (precision/precision.hpp),
// a cluster environment (environments/cluster_environment.hpp) and a checkpoint IO
// (checkpoint/checkpoint_io.hpp).
#pragma once

#include <string>

namespace cppfabric {

class Plugin {
 public:
  virtual ~Plugin() = default;
  /// A short human-readable description used in error messages (defaults to the class name).
  virtual std::string describe() const;
};

}  // namespace cppfabric
