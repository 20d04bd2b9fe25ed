#include "cppfabric/environments/cluster_environment.hpp"

#include <cstdlib>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/environments/lightning.hpp"
#include "cppfabric/environments/mpi.hpp"
#include "cppfabric/environments/slurm.hpp"
#include "cppfabric/environments/torchelastic.hpp"

namespace cppfabric::environments {

namespace detail {
std::optional<std::string> env_string(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

int env_int(const char* name, std::optional<int> fallback) {
  const auto value = env_string(name);
  if (!value) {
    if (fallback) return *fallback;
    throw std::invalid_argument(fmt::format(
        "The environment variable {} is not set; the cluster environment needs it.", name));
  }
  try {
    std::size_t used = 0;
    const int parsed = std::stoi(*value, &used);
    if (used == value->size()) return parsed;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(
      fmt::format("The environment variable {}='{}' is not an integer.", name, *value));
}
}  // namespace detail

std::shared_ptr<ClusterEnvironment> detect_cluster_environment() {
  if (TorchElasticEnvironment::detect()) return std::make_shared<TorchElasticEnvironment>();
  if (SLURMEnvironment::detect()) return std::make_shared<SLURMEnvironment>();
  if (MPIEnvironment::detect()) return std::make_shared<MPIEnvironment>();
  return std::make_shared<LightningEnvironment>();
}

}  // namespace cppfabric::environments
