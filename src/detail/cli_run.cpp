#include "detail/cli_run.hpp"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <regex>
#include <stdexcept>
#include <thread>

#include "connector.hpp"
#include "cppfabric/accelerators/cpu.hpp"
#include "cppfabric/accelerators/cuda.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/strategies/registry.hpp"
#include "detail/process_supervisor.hpp"

namespace cppfabric::detail {

namespace {

const std::vector<std::string> kCliAccelerators = {"cpu", "gpu", "cuda", "mps", "tpu", "auto"};

constexpr const char* kUsage = R"(Usage: cppfabric run [OPTIONS] PROGRAM [ARGS]...

  Runs PROGRAM (a program that uses cppfabric::Fabric) in as many processes as this node needs,
  the way `fabric run` runs a Python script. ARGS are passed to every process unchanged.

Options:
  --accelerator [cpu|gpu|cuda|mps|tpu|auto]  The hardware accelerator to run on.
  --strategy NAME                 How to run across several devices ({strategies}).
  --devices TEXT                  Devices per node: a count, indices such as "0,2", -1 or "auto".
                                  [default: 1]
  --num-nodes, --num_nodes INT    Number of machines (nodes). [default: 1]
  --node-rank, --node_rank INT    Index of this machine, 0 .. num_nodes - 1. [default: 0]
  --main-address, --main_address TEXT
                                  Host name or IP address of node 0. [default: 127.0.0.1]
  --main-port, --main_port INT    Port on node 0 for the rendezvous. [default: 29400]
  --precision [{precisions}]
                                  Precision, as Fabric's `precision=`.
  --help                          Show this message and exit.
)";

// Python's `fabric run --strategy` choices: the registry's names less the start-method, TPU and
// offload variants.
std::vector<std::string> cli_strategies() {
  static const std::regex excluded(".*(spawn|fork|notebook|xla|tpu|offload).*");
  std::vector<std::string> names;
  for (const auto& name : strategies::StrategyRegistry::global().names())
    if (!std::regex_match(name, excluded)) names.push_back(name);
  return names;
}

std::string usage() {
  std::string text = kUsage;
  auto replace = [&text](const std::string& key, const std::string& value) {
    text.replace(text.find(key), key.size(), value);
  };
  replace("{strategies}", fmt::format("{}", fmt::join(cli_strategies(), ", ")));
  replace("{precisions}", fmt::format("{}", fmt::join(precision_choices(), "|")));
  return text;
}

std::string quoted_list(const std::vector<std::string>& names) {
  std::vector<std::string> items;
  for (const auto& n : names) items.push_back("'" + n + "'");
  return fmt::format("{}", fmt::join(items, ", "));
}

void check_choice(const std::string& option, const std::string& value,
                  const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), value) == choices.end()) {
    throw std::invalid_argument(fmt::format("Invalid value for '{}': '{}' is not one of {}.",
                                            option, value, quoted_list(choices)));
  }
}

int parse_int(const std::string& option, const std::string& value) {
  try {
    std::size_t used = 0;
    const int n = std::stoi(value, &used);
    if (used == value.size()) return n;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(
      fmt::format("Invalid value for '{}': '{}' is not a valid integer.", option, value));
}

}  // namespace

std::optional<CliRunConfig> parse_cli(int argc, const char* const* argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(usage().c_str(), stdout);
    return std::nullopt;
  }
  if (args[0] != "run") {
    throw std::invalid_argument(fmt::format(
        "No such command '{}'. Valid commands: 'run' (see `cppfabric run --help`).", args[0]));
  }
  CliRunConfig config;
  std::size_t i = 1;
  for (; i < args.size(); ++i) {
    const std::string raw = args[i];
    std::string option = raw;
    if (option == "--help" || option == "-h") {
      std::fputs(usage().c_str(), stdout);
      return std::nullopt;
    }
    if (option.rfind("--", 0) != 0) break;  // PROGRAM: everything from here is the command
    std::string value;
    if (const auto eq = option.find('='); eq != std::string::npos) {
      value = option.substr(eq + 1);
      option = option.substr(0, eq);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      throw std::invalid_argument(fmt::format("Option '{}' requires an argument.", option));
    }
    std::replace(option.begin(), option.end(), '_', '-');
    if (option == "--accelerator") {
      check_choice("--accelerator", value, kCliAccelerators);
      config.accelerator = value;
    } else if (option == "--strategy") {
      check_choice("--strategy", value, cli_strategies());
      // A name Python knows but cppfabric cannot run fails here, with the registry's reason.
      const auto& registry = strategies::StrategyRegistry::global();
      if (registry.get(value).availability != strategies::StrategyRegistry::Availability::Available)
        registry.create(value);
      config.strategy = value;
    } else if (option == "--devices") {
      config.devices = value;
    } else if (option == "--num-nodes") {
      config.num_nodes = parse_int("--num-nodes", value);
    } else if (option == "--node-rank") {
      config.node_rank = parse_int("--node-rank", value);
    } else if (option == "--main-address") {
      config.main_address = value;
    } else if (option == "--main-port") {
      config.main_port = parse_int("--main-port", value);
    } else if (option == "--precision") {
      check_choice("--precision", value, precision_choices());
      config.precision = value;
    } else {
      throw std::invalid_argument(fmt::format(
          "No such option: '{}'. Valid options: --accelerator, --strategy, --devices, --num-nodes, "
          "--node-rank, --main-address, --main-port, --precision, --help.",
          raw.substr(0, raw.find('='))));
    }
  }
  config.command.assign(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
  if (config.command.empty()) {
    throw std::invalid_argument(
        "Missing argument 'PROGRAM': give the program to run, e.g. "
        "`cppfabric run --devices 2 ./train --epochs 3`.");
  }
  if (config.num_nodes < 1) {
    throw std::invalid_argument(
        fmt::format("Invalid value for '--num-nodes': {} (it must be >= 1).", config.num_nodes));
  }
  if (config.node_rank < 0 || config.node_rank >= config.num_nodes) {
    throw std::invalid_argument(
        fmt::format("Invalid value for '--node-rank': {} (it must be in 0 .. num_nodes - 1 = {}).",
                    config.node_rank, config.num_nodes - 1));
  }
  if (config.main_port < 1 || config.main_port > 65535) {
    throw std::invalid_argument(fmt::format(
        "Invalid value for '--main-port': {} (it must be in 1 .. 65535).", config.main_port));
  }
  return config;
}

int cli_num_processes(const CliRunConfig& config) {
  if (config.strategy == "dp") return 1;
  std::string accelerator = config.accelerator.value_or("auto");
  if (accelerator == "auto") {
    accelerator = accelerators::CUDAAccelerator::device_count() > 0 ? "cuda" : "cpu";
  }
  std::string devices = config.devices;
  if (devices == "auto") devices = "1";
  if (accelerator == "tpu" || accelerator == "mps") {
    throw std::invalid_argument(fmt::format(
        "Launching processes for accelerator='{}' through the CLI is not supported by cppfabric. "
        "Use 'cpu', 'cuda', 'gpu' or 'auto'.",
        accelerator));
  }
  if (accelerator == "cuda" || accelerator == "gpu") {
    return static_cast<int>(accelerators::CUDAAccelerator::parse_gpu_ids(
                                DevicesArg(devices), accelerators::CUDAAccelerator::device_count())
                                .size());
  }
  return accelerators::CPUAccelerator::parse_cpu_cores(DevicesArg(devices));
}

std::map<std::string, std::string> cli_environment(const CliRunConfig& config, int num_processes,
                                                   int local_rank) {
  std::map<std::string, std::string> env;
  env["LT_CLI_USED"] = "1";
  if (config.accelerator) env["LT_ACCELERATOR"] = *config.accelerator;
  if (config.strategy) env["LT_STRATEGY"] = *config.strategy;
  env["LT_DEVICES"] = config.devices;
  env["LT_NUM_NODES"] = std::to_string(config.num_nodes);
  if (config.precision) env["LT_PRECISION"] = *config.precision;
  // What torchrun gives each worker.
  const int world = num_processes * config.num_nodes;
  const int rank = config.node_rank * num_processes + local_rank;
  env["RANK"] = std::to_string(rank);
  env["LOCAL_RANK"] = std::to_string(local_rank);
  env["GROUP_RANK"] = std::to_string(config.node_rank);
  env["ROLE_RANK"] = std::to_string(rank);
  env["ROLE_NAME"] = "default";
  env["WORLD_SIZE"] = std::to_string(world);
  env["ROLE_WORLD_SIZE"] = std::to_string(world);
  env["LOCAL_WORLD_SIZE"] = std::to_string(num_processes);
  env["GROUP_WORLD_SIZE"] = std::to_string(config.num_nodes);
  env["MASTER_ADDR"] = config.main_address;
  env["MASTER_PORT"] = std::to_string(config.main_port);
  env["TORCHELASTIC_RUN_ID"] = "cppfabric";
  env["TORCHELASTIC_RESTART_COUNT"] = "0";
  env["TORCHELASTIC_MAX_RESTARTS"] = "0";
  return env;
}

namespace {
std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal = sig; }
}  // namespace

int cli_main(int argc, const char* const* argv) {
  std::optional<CliRunConfig> config;
  int num_processes = 0;
  try {
    config = parse_cli(argc, argv);
    if (!config) return 0;
    num_processes = cli_num_processes(*config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return 2;
  }
  // Python sets OMP_NUM_THREADS for torchrun's workers unless the user did.
  std::map<std::string, std::string> common;
  if (!std::getenv("OMP_NUM_THREADS")) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    common["OMP_NUM_THREADS"] = std::to_string(std::max(1u, cores / num_processes));
  }
  ::signal(SIGINT, on_stop_signal);
  ::signal(SIGTERM, on_stop_signal);
  ProcessSupervisor children;
  try {
    for (int local_rank = 0; local_rank < num_processes; ++local_rank) {
      auto env = cli_environment(*config, num_processes, local_rank);
      env.insert(common.begin(), common.end());
      children.spawn(config->command, env,
                     fmt::format("rank {} (local rank {})", env.at("RANK"), local_rank));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    children.kill_all(SIGKILL);
    children.wait(std::chrono::seconds(10));
    return 1;
  }
  while (true) {
    if (const int sig = g_stop_signal.load()) {
      std::fprintf(stderr, "cppfabric run: got signal %d, stopping all processes.\n", sig);
      children.kill_all(SIGTERM);
      if (!children.all_exited()) children.wait(std::chrono::seconds(10));
      children.kill_all(SIGKILL);
      children.wait(std::chrono::seconds(10));
      return 128 + sig;
    }
    if (auto failure = children.poll()) {
      std::fprintf(stderr, "cppfabric run: %s. Stopping the other processes.\n",
                   failure->describe().c_str());
      children.kill_all(SIGTERM);
      children.wait(std::chrono::seconds(5));
      children.kill_all(SIGKILL);
      children.wait(std::chrono::seconds(10));
      return failure->exit_code();
    }
    if (children.all_exited()) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace cppfabric::detail
