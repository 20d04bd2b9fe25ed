#include "cppfabric/environments/mpi.hpp"

#include <cstdlib>

#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::environments {

using detail::env_int;
using detail::env_string;

namespace {
// The first variable that is set, as an int (Open MPI first, then MPICH / Intel MPI).
int first_int(std::initializer_list<const char*> names, int fallback) {
  for (const char* name : names) {
    if (env_string(name)) return env_int(name);
  }
  return fallback;
}
}  // namespace

bool MPIEnvironment::detect() { return first_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}, 1) > 1; }

std::string MPIEnvironment::main_address() const {
  return env_string("MASTER_ADDR").value_or("127.0.0.1");
}

int MPIEnvironment::main_port() const {
  if (!env_string("MASTER_PORT")) {
    utilities::rank_zero_warn(
        "MPIEnvironment: MASTER_PORT is not set; using 12910. Set MASTER_ADDR and MASTER_PORT "
        "for jobs that span several nodes.");
    ::setenv("MASTER_PORT", "12910", 1);
  }
  return env_int("MASTER_PORT");
}

int MPIEnvironment::world_size() const {
  return first_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}, 1);
}
int MPIEnvironment::global_rank() const {
  return first_int({"OMPI_COMM_WORLD_RANK", "PMI_RANK"}, 0);
}
int MPIEnvironment::local_rank() const {
  return first_int({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"}, 0);
}
int MPIEnvironment::node_rank() const {
  const int local_size = first_int({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"}, 0);
  return local_size > 0 ? global_rank() / local_size : 0;
}

}  // namespace cppfabric::environments
