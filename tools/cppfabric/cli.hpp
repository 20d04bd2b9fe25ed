// `cppfabric run`: Python's `fabric run` for compiled programs.
// `cppfabric consolidate DIR -o FILE`: Python's `fabric consolidate` (a sharded checkpoint folder
// into one torch.save file). Parses the options (CLI11),
// computes the torchrun-style environment of every local process, starts them and supervises them.
// Built as the static library cppfabric_cli_lib: main.cpp is a one-line wrapper, and the unit tests
// call these functions directly. See docs/cli.md.
//
//   cppfabric run --accelerator cpu --devices 2 ./train --epochs 3
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cppfabric::cli {

/// `cppfabric run`'s options, with `fabric run`'s defaults.
struct RunConfig {
  std::optional<std::string> accelerator;  // unset: the program's own choice
  std::optional<std::string> strategy;
  std::string devices = "1";
  int num_nodes = 1;
  int node_rank = 0;
  std::string main_address = "127.0.0.1";
  int main_port = 29400;
  std::optional<std::string> precision;
  int max_restarts = 0;              // torchrun's --max-restarts: restart every process this often
  std::vector<std::string> command;  // PROGRAM ARGS...
};

/// Parses `cppfabric run [options] PROGRAM [ARGS...]` (argv[0] is the tool). Throws
/// std::invalid_argument naming the bad value and the valid choices. Returns nullopt after printing
/// the help text (`--help`, or no arguments at all).
std::optional<RunConfig> parse_args(int argc, const char* const* argv);

/// Processes to start on this node: Python's _get_num_processes (cpu: the count; cuda/gpu: the
/// number of GPU indices selected; auto: cuda when a GPU is visible, else cpu).
int num_processes(const RunConfig& config);

/// The variables `fabric run` sets for its processes (LT_*), and those torchrun gives each worker
/// (`restart_count`: TORCHELASTIC_RESTART_COUNT, how often the processes have been restarted).
std::map<std::string, std::string> process_environment(const RunConfig& config, int num_processes,
                                                       int local_rank, int restart_count = 0);

/// `cppfabric consolidate`'s arguments (Python: `fabric consolidate` /
/// lightning.fabric.utilities.consolidate_checkpoint).
struct ConsolidateConfig {
  std::string checkpoint_folder;  // a sharded (torch.distributed.checkpoint) folder
  std::string output_file;        // default: the folder's name + ".consolidated"
};

/// Parses `cppfabric consolidate DIR [-o FILE]` (argv[0] is the tool, argv[1] "consolidate").
/// Throws std::invalid_argument naming the bad argument (a missing folder, a folder that is not a
/// sharded checkpoint, an output that exists). Returns nullopt after printing the help text.
std::optional<ConsolidateConfig> parse_consolidate_args(int argc, const char* const* argv);

/// Runs the tool: starts and supervises the processes; returns its exit code (0; 2 for bad
/// arguments; the first failure's code after stopping the others; 128 + signal when stopped).
/// With `--max-restarts N`, a failure stops every process and starts them all again, up to N
/// times (torchrun's semantics); the last failure's code is returned once restarts run out.
int tool_main(int argc, const char* const* argv);

}  // namespace cppfabric::cli
