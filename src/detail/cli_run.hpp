// `cppfabric run`: Python's `fabric run` for compiled programs. Parses the options, computes the
// torchrun-style environment of every local process, starts them and supervises them. Private;
// tools/cppfabric/main.cpp is a one-line wrapper, and the tests call these functions directly.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cppfabric::detail {

struct CliRunConfig {
  std::optional<std::string> accelerator;  // unset: the program's own choice
  std::optional<std::string> strategy;
  std::string devices = "1";
  int num_nodes = 1;
  int node_rank = 0;
  std::string main_address = "127.0.0.1";
  int main_port = 29400;
  std::optional<std::string> precision;
  std::vector<std::string> command;  // PROGRAM ARGS...
};

/// Parses `cppfabric run [options] PROGRAM [ARGS...]` (argv[0] is the tool). Throws
/// std::invalid_argument naming the bad value and the valid choices. Returns nullopt after printing
/// the help text (`--help`).
std::optional<CliRunConfig> parse_cli(int argc, const char* const* argv);

/// Processes to start on this node: Python's _get_num_processes (cpu: the count; cuda/gpu: the
/// number of GPU indices selected; auto: cuda when a GPU is visible, else cpu).
int cli_num_processes(const CliRunConfig& config);

/// The variables `fabric run` sets for its processes (LT_*), and those torchrun gives each worker.
std::map<std::string, std::string> cli_environment(const CliRunConfig& config, int num_processes,
                                                   int local_rank);

/// Starts and supervises the processes; returns the exit code for the tool (0, or the first
/// failure's code after stopping the others).
int cli_main(int argc, const char* const* argv);

}  // namespace cppfabric::detail
