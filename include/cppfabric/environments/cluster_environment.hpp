// ClusterEnvironment: where ranks, world size and the main address come from (torchrun, SLURM,
// MPI, or Fabric's own launcher). Pass one through FabricOptions::plugins to override detection.
//
//   auto env = cppfabric::environments::detect_cluster_environment();   // Python's order
//   env->global_rank(); env->world_size(); env->main_address(); env->main_port();
//
//   struct MyCluster : cppfabric::environments::ClusterEnvironment { ... };
//   Fabric fabric({.plugins = {std::make_shared<MyCluster>()}});
#pragma once

#include <memory>
#include <optional>
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
  /// Environments whose ranks come from a scheduler ignore these (as Python does).
  virtual void set_world_size(int size) {}
  virtual void set_global_rank(int rank) {}
  /// Checks `devices` x `num_nodes` against what the scheduler started; throws
  /// std::invalid_argument naming both on a mismatch.
  virtual void validate_settings(int num_devices, int num_nodes) const {}
  virtual void teardown() {}
};

/// The first environment whose variables are present, in Python's order: TorchElastic,
/// SLURM, MPI; otherwise the Lightning environment (Fabric's own launcher).
std::shared_ptr<ClusterEnvironment> detect_cluster_environment();

namespace detail {
/// An environment variable as an int; std::invalid_argument naming the variable when it is
/// missing (and `fallback` is unset) or not an integer.
int env_int(const char* name, std::optional<int> fallback = std::nullopt);
std::optional<std::string> env_string(const char* name);
}  // namespace detail

}  // namespace cppfabric::environments
