// SLURMEnvironment: processes started by `srun` (detected by SLURM_NTASKS, unless the job is
// named "bash" or "interactive"). Ranks from SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID, world
// size from SLURM_NTASKS; the main address is MASTER_ADDR or the first host of SLURM_NODELIST;
// the port MASTER_PORT or 15000 + the last four digits of SLURM_JOB_ID.
//
//   srun --ntasks-per-node=4 --nodes=2 ./train
#pragma once

#include <optional>

#include "cppfabric/environments/cluster_environment.hpp"

namespace cppfabric::environments {

class SLURMEnvironment : public ClusterEnvironment {
 public:
  /// Throws std::runtime_error for `--ntasks=N` (N > 1) without `--ntasks-per-node`, as Python.
  SLURMEnvironment();
  static bool detect();
  bool creates_processes_externally() const override { return true; }
  std::string main_address() const override;
  int main_port() const override;
  int world_size() const override;
  int global_rank() const override;
  int local_rank() const override;
  int node_rank() const override;
  void validate_settings(int num_devices, int num_nodes) const override;

  static std::optional<std::string> job_name();
  /// SLURM_JOB_ID as an int; nullopt in interactive mode or when absent/unparsable.
  static std::optional<long long> job_id();
  /// The first host of a SLURM node list: "host0 host1", "host0,host1", "host[5-9]" -> host5.
  static std::string resolve_root_node_address(const std::string& nodes);
};

}  // namespace cppfabric::environments
