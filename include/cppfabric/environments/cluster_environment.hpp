// ClusterEnvironment: where ranks, world size and the main address come from (torchrun, SLURM,
// MPI, or Fabric's own launcher). Pass one through FabricOptions::plugins to override detection.
//
//   struct MyCluster : cppfabric::environments::ClusterEnvironment { ... };
//   Fabric fabric({.plugins = {std::make_shared<MyCluster>()}});
#pragma once

#include <string>

#include "cppfabric/plugins.hpp"

namespace cppfabric::environments {

class ClusterEnvironment : public Plugin {
 public:
  /// True when the processes were started by someone else (torchrun, srun, mpirun).
  virtual bool creates_processes_externally() const = 0;
  virtual std::string main_address() const = 0;
  virtual int main_port() const = 0;
  virtual int world_size() const = 0;
  virtual int global_rank() const = 0;
  virtual int local_rank() const = 0;
  virtual int node_rank() const = 0;
};

}  // namespace cppfabric::environments
