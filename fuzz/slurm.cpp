// libFuzzer target: SLURM's environment as a job could set it. The input holds up to five
// '\n'-separated fields: SLURM_NODELIST, SLURM_JOB_ID, SLURM_NTASKS, SLURM_NTASKS_PER_NODE,
// SLURM_NNODES. Node-list parsing must never crash and must agree with Lightning's two regular
// expressions (checked on short inputs, where std::regex is safe to run); bad values must be
// std::invalid_argument or std::runtime_error.
#include <cppfabric/environments/slurm.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {
// Lightning's SLURMEnvironment.resolve_root_node_address, with std::regex.
std::string reference(const std::string& nodes) {
  static const std::regex ranges(R"(\[(.*?)[,-].*\])"), single(R"(\[(.*?)\])");
  std::string first = std::regex_replace(nodes, ranges, "$1");
  first = std::regex_replace(first, single, "$1");
  first = first.substr(0, first.find(' '));
  return first.substr(0, first.find(','));
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using cppfabric::environments::SLURMEnvironment;
  std::vector<std::string> fields(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n' && fields.size() < 5) {
      fields.emplace_back();
    } else {
      fields.back() += static_cast<char>(data[i]);
    }
  }
  const std::string& nodes = fields[0];
  const std::string root = SLURMEnvironment::resolve_root_node_address(nodes);
  if (nodes.size() <= 64 && nodes.find_first_of("\r\n") == std::string::npos &&
      nodes.find('\0') == std::string::npos && root != reference(nodes)) {
    std::abort();  // differs from Lightning's parsing
  }
  static const char* names[] = {"SLURM_NODELIST", "SLURM_JOB_ID", "SLURM_NTASKS",
                                "SLURM_NTASKS_PER_NODE", "SLURM_NNODES"};
  for (size_t k = 0; k < 5; ++k) {
    if (k < fields.size() && fields[k].find('\0') == std::string::npos) {
      ::setenv(names[k], fields[k].c_str(), 1);
    } else {
      ::unsetenv(names[k]);
    }
  }
  ::unsetenv("MASTER_ADDR");
  ::unsetenv("MASTER_PORT");
  ::unsetenv("SLURM_JOB_NAME");
  try {
    SLURMEnvironment env;
    (void)env.main_address();
    (void)env.main_port();
    (void)SLURMEnvironment::job_id();
    (void)env.world_size();
    env.validate_settings(1, 1);
  } catch (const std::invalid_argument&) {
  } catch (const std::runtime_error&) {
  }
  return 0;
}
