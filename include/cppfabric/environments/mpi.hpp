// MPIEnvironment: processes started by `mpirun` / `mpiexec` (Open MPI's OMPI_COMM_WORLD_* or
// MPICH/Intel MPI's PMI_* variables), detected when the MPI world size is above 1. cppfabric
// does not link an MPI library, so the rendezvous address comes from MASTER_ADDR (default
// 127.0.0.1) and MASTER_PORT (required when the job spans several nodes).
//
//   MASTER_ADDR=node0 MASTER_PORT=29500 mpirun -np 8 ./train
#pragma once

#include "cppfabric/environments/cluster_environment.hpp"

namespace cppfabric::environments {

class MPIEnvironment : public ClusterEnvironment {
 public:
  static bool detect();
  bool creates_processes_externally() const override { return true; }
  std::string main_address() const override;
  int main_port() const override;
  int world_size() const override;
  int global_rank() const override;
  int local_rank() const override;
  /// Open MPI: rank / OMPI_COMM_WORLD_LOCAL_SIZE (a uniform layout); MPICH: PMI node id when
  /// given; otherwise 0.
  int node_rank() const override;
};

}  // namespace cppfabric::environments
