// TorchElasticEnvironment: processes started by `torchrun` (detected by TORCHELASTIC_RUN_ID).
// RANK, LOCAL_RANK, WORLD_SIZE and GROUP_RANK come from torchrun; MASTER_ADDR/MASTER_PORT
// default to 127.0.0.1:12910 with a warning.
//
//   torchrun --nproc-per-node 4 ./train      # no fabric.launch() needed
#pragma once

#include "cppfabric/environments/cluster_environment.hpp"

namespace cppfabric::environments {

class TorchElasticEnvironment : public ClusterEnvironment {
 public:
  static bool detect();
  bool creates_processes_externally() const override { return true; }
  std::string main_address() const override;
  int main_port() const override;
  int world_size() const override;
  int global_rank() const override;
  int local_rank() const override;
  int node_rank() const override;
  void validate_settings(int num_devices, int num_nodes) const override;
};

}  // namespace cppfabric::environments
