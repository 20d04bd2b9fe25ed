// CheckpointIO: how checkpoint files are written and read. Pass one through
// FabricOptions::plugins to replace the default (torch.save-compatible) format.
#pragma once

#include <string>

#include "cppfabric/plugins.hpp"

namespace cppfabric::checkpoint {

class CheckpointIO : public Plugin {
 public:
  /// Deletes a checkpoint written by this IO.
  virtual void remove_checkpoint(const std::string& path) = 0;
};

}  // namespace cppfabric::checkpoint
