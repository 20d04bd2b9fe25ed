#include "cppfabric/environments/slurm.hpp"

#include <cstdlib>
#include <regex>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::environments {

using detail::env_int;
using detail::env_string;

namespace {
bool interactive_mode() {
  const auto name = SLURMEnvironment::job_name();
  return name && (*name == "bash" || *name == "interactive");
}
bool srun_used() { return env_string("SLURM_NTASKS").has_value() && !interactive_mode(); }
}  // namespace

SLURMEnvironment::SLURMEnvironment() {
  const int ntasks = env_int("SLURM_NTASKS", 1);
  if (ntasks > 1 && !env_string("SLURM_NTASKS_PER_NODE")) {
    throw std::runtime_error(fmt::format(
        "You set `--ntasks={}` in your SLURM job, but cppfabric needs tasks per node. HINT: use "
        "`--ntasks-per-node={}` instead.",
        ntasks, ntasks));
  }
}

bool SLURMEnvironment::detect() { return srun_used(); }

std::optional<std::string> SLURMEnvironment::job_name() { return env_string("SLURM_JOB_NAME"); }

std::optional<long long> SLURMEnvironment::job_id() {
  if (interactive_mode()) return std::nullopt;
  const auto id = env_string("SLURM_JOB_ID");
  if (!id) return std::nullopt;
  try {
    std::size_t used = 0;
    const long long value = std::stoll(*id, &used);
    if (used == id->size()) return value;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

std::string SLURMEnvironment::resolve_root_node_address(const std::string& nodes) {
  // The first node of every range ("host[5-9]" -> "host5"), then a single-number range.
  std::string first = std::regex_replace(nodes, std::regex(R"(\[(.*?)[,-].*\])"), "$1");
  first = std::regex_replace(first, std::regex(R"(\[(.*?)\])"), "$1");
  first = first.substr(0, first.find(' '));
  return first.substr(0, first.find(','));
}

std::string SLURMEnvironment::main_address() const {
  if (auto address = env_string("MASTER_ADDR")) return *address;
  const std::string root =
      resolve_root_node_address(env_string("SLURM_NODELIST").value_or("127.0.0.1"));
  ::setenv("MASTER_ADDR", root.c_str(), 1);
  return root;
}

int SLURMEnvironment::main_port() const {
  int port = 12910;
  if (const auto id = env_string("SLURM_JOB_ID")) {
    const std::string last4 = id->size() > 4 ? id->substr(id->size() - 4) : *id;
    try {
      port = std::stoi(last4) + 15000;
    } catch (const std::exception&) {
      throw std::invalid_argument(
          fmt::format("SLURM_JOB_ID='{}' does not end in digits; set MASTER_PORT instead.", *id));
    }
  }
  if (env_string("MASTER_PORT")) return env_int("MASTER_PORT");
  ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  return port;
}

int SLURMEnvironment::world_size() const { return env_int("SLURM_NTASKS"); }
int SLURMEnvironment::global_rank() const { return env_int("SLURM_PROCID"); }
int SLURMEnvironment::local_rank() const { return env_int("SLURM_LOCALID"); }
int SLURMEnvironment::node_rank() const { return env_int("SLURM_NODEID"); }

void SLURMEnvironment::validate_settings(int num_devices, int num_nodes) const {
  if (interactive_mode()) return;
  if (const auto per_node = env_string("SLURM_NTASKS_PER_NODE")) {
    if (env_int("SLURM_NTASKS_PER_NODE") != num_devices) {
      throw std::invalid_argument(
          fmt::format("You set `devices={}`, but the number of tasks per node configured in SLURM "
                      "`--ntasks-per-node={}` does not match. HINT: Set `devices={}`.",
                      num_devices, *per_node, *per_node));
    }
  }
  if (const auto nodes = env_string("SLURM_NNODES")) {
    if (env_int("SLURM_NNODES") != num_nodes) {
      throw std::invalid_argument(fmt::format(
          "You set `num_nodes={}`, but the number of nodes configured in SLURM `--nodes={}` does "
          "not match. HINT: Set `num_nodes={}`.",
          num_nodes, *nodes, *nodes));
    }
  }
}

}  // namespace cppfabric::environments
