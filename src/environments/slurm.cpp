#include "cppfabric/environments/slurm.hpp"

#include <cstdlib>
#include <string>

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

namespace {
// Lightning's re.sub(r"\[(.*?)[,-].*\]", r"\1", s) (with_separator) and re.sub(r"\[(.*?)\]",
// r"\1", s), in one linear pass each; '.' does not match a line break, as in Python. (std::regex
// recurses per character in libstdc++ and backtracks: fuzz/slurm.cpp found a 10 KB node list
// with 1600 '[' taking 13 s, and a 100k-character one overflows the stack.)
std::string strip_brackets(const std::string& s, bool with_separator) {
  const std::size_t npos = std::string::npos;
  std::string out;
  out.reserve(s.size());
  std::size_t line_end = npos, last_close = npos;  // the current line's end and its last ']'
  std::size_t next_sep = 0, next_close = 0;  // the next ',' or '-' / ']' at or after a position
  for (std::size_t p = 0; p < s.size();) {
    if (s[p] != '[') {
      out += s[p++];
      continue;
    }
    if (line_end == npos || p > line_end) {
      line_end = s.find('\n', p);
      if (line_end == npos) line_end = s.size();
      last_close = s.rfind(']', line_end - 1);
      if (last_close != npos && last_close < p) last_close = npos;
    }
    std::size_t end = npos;  // the ']' that closes a match starting at p
    if (with_separator) {
      if (next_sep != npos && next_sep <= p) next_sep = s.find_first_of(",-", p + 1);
      if (last_close != npos && next_sep != npos && next_sep < last_close && last_close > p) {
        out.append(s, p + 1, next_sep - p - 1);
        end = last_close;
      }
    } else {
      if (next_close != npos && next_close <= p) next_close = s.find(']', p + 1);
      if (next_close != npos && next_close < line_end) {
        out.append(s, p + 1, next_close - p - 1);
        end = next_close;
      }
    }
    if (end == npos) {
      out += s[p++];
    } else {
      p = end + 1;
    }
  }
  return out;
}
}  // namespace

std::string SLURMEnvironment::resolve_root_node_address(const std::string& nodes) {
  // The first node of every range ("host[5-9]" -> "host5"), then a single-number range.
  std::string first = strip_brackets(strip_brackets(nodes, true), false);
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
