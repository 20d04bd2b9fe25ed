// CheckpointIO: how checkpoint files are written and read. Pass one through
// FabricOptions::plugins to replace the default (torch.save-compatible) format.
//
//   struct MyIO : cppfabric::checkpoint::CheckpointIO { ... };
//   Fabric fabric({.plugins = {std::make_shared<MyIO>()}});
//
// The default, TorchCheckpointIO, writes one torch.save zip file per checkpoint (readable by
// Python's torch.load(weights_only=True)), atomically: a temporary file in the same folder is
// renamed over the target only once it is complete and synced.
#pragma once

#include <string>

#include "cppfabric/plugins.hpp"
#include "cppfabric/state.hpp"

namespace cppfabric::checkpoint {

class CheckpointIO : public Plugin {
 public:
  /// Writes `checkpoint` (a dict Value) to `path`. The default throws std::logic_error.
  virtual void save_checkpoint(const Value& checkpoint, const std::string& path);
  /// Reads the checkpoint at `path`, tensors on the CPU. The default throws std::logic_error.
  virtual Value load_checkpoint(const std::string& path);
  /// Deletes a checkpoint written by this IO.
  virtual void remove_checkpoint(const std::string& path) = 0;
};

/// torch.save's zip format (see checkpoint/torch_pickle.hpp).
class TorchCheckpointIO : public CheckpointIO {
 public:
  std::string describe() const override { return "TorchCheckpointIO"; }
  /// Creates parent folders, then writes atomically.
  void save_checkpoint(const Value& checkpoint, const std::string& path) override;
  /// std::runtime_error "Checkpoint file not found: <path>" when missing.
  Value load_checkpoint(const std::string& path) override;
  /// Removes the file if it exists.
  void remove_checkpoint(const std::string& path) override;
};

}  // namespace cppfabric::checkpoint
