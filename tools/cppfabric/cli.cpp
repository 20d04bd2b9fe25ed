#include "cli.hpp"

#include <signal.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <regex>
#include <stdexcept>
#include <thread>

#include "connector.hpp"
#include "cppfabric/accelerators/cpu.hpp"
#include "cppfabric/accelerators/cuda.hpp"
#include "cppfabric/checkpoint/sharded.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/strategies/registry.hpp"
#include "launchers/num_threads.hpp"
#include "launchers/process_supervisor.hpp"
#include "utilities/env.hpp"
#include "utilities/filesystem.hpp"

namespace cppfabric::cli {

namespace {

const std::vector<std::string> kAccelerators = {"cpu", "gpu", "cuda", "mps", "tpu", "auto"};

// The checks throw click's messages (the option in quotes, the bad value, the valid choices) from
// the option's callback, which CLI11 passes through unchanged; its own would read "--name: ...".
void add_choice(CLI::App& app, const std::string& name, std::optional<std::string>& target,
                const std::vector<std::string>& choices, const std::string& help) {
  app.add_option_function<std::string>(
         name,
         [&target, name, choices](const std::string& value) {
           if (std::find(choices.begin(), choices.end(), value) == choices.end()) {
             std::vector<std::string> quoted;
             for (const auto& c : choices) quoted.push_back("'" + c + "'");
             throw std::invalid_argument(
                 fmt::format("Invalid value for '{}': '{}' is not one of {}.", name, value,
                             fmt::join(quoted, ", ")));
           }
           target = value;
         },
         help)
      ->type_name(fmt::format("[{}]", fmt::join(choices, "|")));
}

// Python's int() rules: surrounding spaces and a sign are fine.
void add_int(CLI::App& app, const std::string& names, int& target, const std::string& help) {
  const std::string name = names.substr(0, names.find(','));
  app.add_option_function<std::string>(
         names,
         [&target, name](const std::string& value) {
           const auto n = detail::parse_int(value);
           if (!n || *n < INT_MIN || *n > INT_MAX) {
             throw std::invalid_argument(
                 fmt::format("Invalid value for '{}': '{}' is not a valid integer.", name, value));
           }
           target = static_cast<int>(*n);
         },
         help)
      ->type_name("INT")
      ->default_str(std::to_string(target));
}

// Python's `fabric run --strategy` choices: the registry's names less the start-method, TPU and
// offload variants.
std::vector<std::string> cli_strategies() {
  static const std::regex excluded(".*(spawn|fork|notebook|xla|tpu|offload).*");
  std::vector<std::string> names;
  for (const auto& name : strategies::StrategyRegistry::global().names())
    if (!std::regex_match(name, excluded)) names.push_back(name);
  return names;
}

void print_help(const CLI::App& app) { std::fputs(app.help().c_str(), stdout); }

}  // namespace

std::optional<RunConfig> parse_args(int argc, const char* const* argv) {
  RunConfig config;
  CLI::App app("Lightning Fabric's `fabric run` for compiled programs.", "cppfabric");
  app.require_subcommand(0, 1);
  app.allow_extras();  // an unknown command gets click's message below, not CLI11's
  CLI::App* run = app.add_subcommand(
      "run",
      "Runs PROGRAM (a program that uses cppfabric::Fabric) in as many processes as this node "
      "needs, the way `fabric run` runs a Python script. ARGS are passed to every process "
      "unchanged.");
  // Options end at PROGRAM: it and everything after it, option-like or not, stay in remaining().
  run->prefix_command();
  run->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  run->footer("PROGRAM [ARGS]...  the program to run and its arguments");
  app.footer(
      "Also: cppfabric consolidate CHECKPOINT_FOLDER [-o FILE]  (see `cppfabric consolidate "
      "--help`)");

  add_choice(*run, "--accelerator", config.accelerator, kAccelerators,
             "The hardware accelerator to run on.");
  add_choice(*run, "--strategy", config.strategy, cli_strategies(),
             "How to run across several devices.");
  run->add_option("--devices", config.devices,
                  "Devices per node: a count, indices such as \"0,2\", -1 or \"auto\".")
      ->capture_default_str();
  add_int(*run, "--num-nodes,--num_nodes", config.num_nodes, "Number of machines (nodes).");
  add_int(*run, "--node-rank,--node_rank", config.node_rank,
          "Index of this machine, 0 .. num_nodes - 1.");
  run->add_option("--main-address,--main_address", config.main_address,
                  "Host name or IP address of node 0.")
      ->capture_default_str();
  add_int(*run, "--main-port,--main_port", config.main_port, "Port on node 0 for the rendezvous.");
  add_choice(*run, "--precision", config.precision, detail::precision_choices(),
             "Precision, as Fabric's `precision=`.");
  add_int(*run, "--max-restarts,--max_restarts", config.max_restarts,
          "When a process fails, stop all and start them all again, at most this many times "
          "(torchrun's --max-restarts; the processes see TORCHELASTIC_RESTART_COUNT).");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success&) {  // --help
    print_help(app);
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    throw std::invalid_argument(e.what());
  }

  if (!run->parsed()) {
    if (app.remaining().empty()) {
      print_help(app);
      return std::nullopt;
    }
    const std::string first = app.remaining().front();
    if (first.size() > 1 && first[0] == '-') {
      throw std::invalid_argument(fmt::format("No such option: '{}'. Valid options: --help.",
                                              first.substr(0, first.find('='))));
    }
    throw std::invalid_argument(fmt::format(
        "No such command '{}'. Valid commands: 'run', 'consolidate' (see `cppfabric run --help`, "
        "`cppfabric consolidate --help`).",
        first));
  }
  config.command = run->remaining();
  if (!config.command.empty() && config.command[0].size() > 1 && config.command[0][0] == '-') {
    std::vector<std::string> names;
    for (const CLI::Option* option : run->get_options()) names.push_back(option->get_name());
    throw std::invalid_argument(fmt::format(
        "No such option: '{}'. Valid options: {}.",
        config.command[0].substr(0, config.command[0].find('=')), fmt::join(names, ", ")));
  }
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
  if (config.max_restarts < 0) {
    throw std::invalid_argument(fmt::format(
        "Invalid value for '--max-restarts': {} (it must be >= 0).", config.max_restarts));
  }
  if (config.main_port < 1 || config.main_port > 65535) {
    throw std::invalid_argument(fmt::format(
        "Invalid value for '--main-port': {} (it must be in 1 .. 65535).", config.main_port));
  }
  if (config.strategy) {
    // A name Python knows but cppfabric cannot run fails here, with the registry's reason.
    const auto& registry = strategies::StrategyRegistry::global();
    if (registry.get(*config.strategy).availability !=
        strategies::StrategyRegistry::Availability::Available) {
      registry.create(*config.strategy);
    }
  }
  return config;
}

std::optional<ConsolidateConfig> parse_consolidate_args(int argc, const char* const* argv) {
  ConsolidateConfig config;
  std::optional<std::string> output;
  CLI::App app(
      "Converts a distributed/sharded checkpoint (a folder in torch.distributed.checkpoint's "
      "layout: .metadata + __<rank>_0.distcp files, plus Lightning's meta.pt) into a single file "
      "that can be loaded with `torch.load()` (weights_only=True works).",
      "cppfabric consolidate");
  app.add_option("checkpoint_folder", config.checkpoint_folder,
                 "Path to a checkpoint folder, containing the sharded checkpoint files.")
      ->required();
  app.add_option("-o,--output-file,--output_file", output,
                 "Path to the file where the converted checkpoint should be saved. The file should "
                 "not already exist. Default: the folder's path with a '.consolidated' suffix.");
  // argv[1] is "consolidate": parse what follows it.
  std::vector<std::string> args;
  for (int k = argc - 1; k >= 2; --k) args.emplace_back(argv[k]);
  try {
    app.parse(args);
  } catch (const CLI::Success&) {  // --help
    print_help(app);
    return std::nullopt;
  } catch (const CLI::RequiredError&) {
    throw std::invalid_argument(
        "Missing argument 'CHECKPOINT_FOLDER': give the sharded checkpoint folder to convert, "
        "e.g. `cppfabric consolidate checkpoints/step-100 -o step-100.pt`.");
  } catch (const CLI::ParseError& e) {
    throw std::invalid_argument(e.what());
  }
  std::string folder = config.checkpoint_folder;
  while (folder.size() > 1 && folder.back() == '/') folder.pop_back();
  struct stat info {};
  if (::stat(folder.c_str(), &info) != 0) {
    throw std::invalid_argument(
        fmt::format("The provided checkpoint folder does not exist: {}", folder));
  }
  if (!detail::is_directory(folder)) {
    throw std::invalid_argument(fmt::format(
        "The provided checkpoint path must be a folder, containing the checkpoint shards: {}",
        folder));
  }
  if (!checkpoint::is_sharded_checkpoint(folder)) {
    throw std::invalid_argument(fmt::format(
        "The provided folder is not a sharded checkpoint (it has no .metadata file): {}", folder));
  }
  config.checkpoint_folder = folder;
  config.output_file = output.value_or(folder + ".consolidated");
  if (::stat(config.output_file.c_str(), &info) == 0) {
    throw std::invalid_argument(fmt::format(
        "The path for the converted checkpoint already exists. Choose a different path by "
        "providing `--output-file` or move/delete the file first: {}",
        config.output_file));
  }
  return config;
}

int num_processes(const RunConfig& config) {
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

std::map<std::string, std::string> process_environment(const RunConfig& config, int num_processes,
                                                       int local_rank, int restart_count) {
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
  env["TORCHELASTIC_RESTART_COUNT"] = std::to_string(restart_count);
  env["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(config.max_restarts);
  return env;
}

namespace {
std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal = sig; }

// How long processes get to exit after SIGTERM: when the tool itself is asked to stop, and when
// another process of the run has failed.
constexpr std::chrono::seconds kStopGrace{10};
constexpr std::chrono::seconds kFailureGrace{5};
}  // namespace

namespace {
int consolidate_main(int argc, const char* const* argv) {
  std::optional<ConsolidateConfig> config;
  try {
    config = parse_consolidate_args(argc, argv);
    if (!config) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return 2;
  }
  try {
    checkpoint::consolidate(config->checkpoint_folder, config->output_file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return 1;
  }
  std::printf("Wrote %s\n", config->output_file.c_str());
  return 0;
}
}  // namespace

int tool_main(int argc, const char* const* argv) {
  if (argc >= 2 && std::string(argv[1]) == "consolidate") return consolidate_main(argc, argv);
  std::optional<RunConfig> config;
  int processes = 0;
  try {
    config = parse_args(argc, argv);
    if (!config) return 0;
    processes = num_processes(*config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return 2;
  }
  // Python sets OMP_NUM_THREADS for torchrun's workers unless the user did.
  std::map<std::string, std::string> common;
  if (!detail::env_string("OMP_NUM_THREADS")) {
    common["OMP_NUM_THREADS"] = std::to_string(detail::suggested_max_num_threads(processes));
  }
  ::signal(SIGINT, on_stop_signal);
  ::signal(SIGTERM, on_stop_signal);
  for (int restart = 0;; ++restart) {
    detail::ProcessSupervisor children;
    try {
      for (int local_rank = 0; local_rank < processes; ++local_rank) {
        auto env = process_environment(*config, processes, local_rank, restart);
        env.insert(common.begin(), common.end());
        children.spawn(config->command, env,
                       fmt::format("rank {} (local rank {})", env.at("RANK"), local_rank));
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "Error: %s\n", e.what());
      children.stop_all(std::chrono::milliseconds(0));
      return 1;
    }
    std::optional<detail::ProcessSupervisor::Failure> failure;
    while (true) {
      if (const int sig = g_stop_signal.load()) {
        std::fprintf(stderr, "cppfabric run: got signal %d, stopping all processes.\n", sig);
        children.stop_all(kStopGrace);
        return 128 + sig;
      }
      if ((failure = children.poll())) break;
      if (children.all_exited()) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::fprintf(stderr, "cppfabric run: %s. Stopping the other processes.\n",
                 failure->describe().c_str());
    children.stop_all(kFailureGrace);
    if (restart >= config->max_restarts) {
      if (config->max_restarts > 0) {
        std::fprintf(stderr, "cppfabric run: giving up after %d restart%s (--max-restarts %d).\n",
                     restart, restart == 1 ? "" : "s", config->max_restarts);
      }
      return failure->exit_code();
    }
    std::fprintf(stderr,
                 "cppfabric run: restarting all %d processes (restart %d of %d, "
                 "TORCHELASTIC_RESTART_COUNT=%d).\n",
                 processes, restart + 1, config->max_restarts, restart + 1);
  }
}

}  // namespace cppfabric::cli
