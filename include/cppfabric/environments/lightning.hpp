// LightningEnvironment: Fabric launches the processes itself (or the user sets LOCAL_RANK and
// friends by hand). MASTER_ADDR defaults to 127.0.0.1; MASTER_PORT to STANDALONE_PORT or a
// free port; LOCAL_RANK and NODE_RANK (or GROUP_RANK) default to 0.
//
//   cppfabric::environments::LightningEnvironment env;
//   env.set_world_size(4); env.set_global_rank(2);
#pragma once

#include "cppfabric/environments/cluster_environment.hpp"

namespace cppfabric::environments {

class LightningEnvironment : public ClusterEnvironment {
 public:
  /// Always applicable: the fallback when nothing else is detected.
  static bool detect() { return true; }
  /// True when LOCAL_RANK is set: someone else started the processes.
  bool creates_processes_externally() const override;
  std::string main_address() const override;
  /// MASTER_PORT, else STANDALONE_PORT, else a free port (chosen once, then kept).
  int main_port() const override;
  int world_size() const override { return world_size_; }
  void set_world_size(int size) override { world_size_ = size; }
  int global_rank() const override { return global_rank_; }
  void set_global_rank(int rank) override { global_rank_ = rank; }
  int local_rank() const override;
  int node_rank() const override;
  /// Removes WORLD_SIZE from the environment, as Python does.
  void teardown() override;

 private:
  mutable int main_port_ = -1;
  int global_rank_ = 0;
  int world_size_ = 1;
};

/// A free TCP port on this machine (STANDALONE_PORT when set).
int find_free_network_port();

}  // namespace cppfabric::environments
