#include "cppfabric/environments/torchelastic.hpp"

#include <cstdlib>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::environments {

using detail::env_int;
using detail::env_string;

bool TorchElasticEnvironment::detect() { return env_string("TORCHELASTIC_RUN_ID").has_value(); }

std::string TorchElasticEnvironment::main_address() const {
  if (!env_string("MASTER_ADDR")) {
    utilities::rank_zero_warn("MASTER_ADDR environment variable is not defined. Set as localhost");
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  }
  return *env_string("MASTER_ADDR");
}

int TorchElasticEnvironment::main_port() const {
  if (!env_string("MASTER_PORT")) {
    utilities::rank_zero_warn("MASTER_PORT environment variable is not defined. Set as 12910");
    ::setenv("MASTER_PORT", "12910", 1);
  }
  return env_int("MASTER_PORT");
}

int TorchElasticEnvironment::world_size() const { return env_int("WORLD_SIZE"); }
int TorchElasticEnvironment::global_rank() const { return env_int("RANK"); }
int TorchElasticEnvironment::local_rank() const { return env_int("LOCAL_RANK"); }
int TorchElasticEnvironment::node_rank() const { return env_int("GROUP_RANK", 0); }

void TorchElasticEnvironment::validate_settings(int num_devices, int num_nodes) const {
  if (num_devices * num_nodes != world_size()) {
    throw std::invalid_argument(fmt::format(
        "You set `devices={}` and `num_nodes={}`, but the product ({} * {}) does not match the "
        "world size ({}) torchrun started. Make them agree, e.g. `--nproc-per-node={}`.",
        num_devices, num_nodes, num_devices, num_nodes, world_size(), num_devices));
  }
}

}  // namespace cppfabric::environments
