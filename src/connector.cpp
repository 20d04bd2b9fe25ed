#include "connector.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>

#include "cppfabric/accelerators/cpu.hpp"
#include "cppfabric/accelerators/cuda.hpp"
#include "cppfabric/checkpoint/checkpoint_io.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/environments/cluster_environment.hpp"
#include "cppfabric/plugins.hpp"
#include "cppfabric/precision/double.hpp"
#include "cppfabric/precision/half.hpp"
#include "cppfabric/precision/mixed.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/strategies/registry.hpp"
#include "cppfabric/strategies/strategy.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "utilities/env.hpp"

namespace cppfabric::detail {
namespace {

const std::vector<std::string> kAcceleratorNames = {"cpu", "cuda", "mps", "tpu"};

const std::vector<std::string> kPrecisionStrings = {"transformer-engine",
                                                    "transformer-engine-float16",
                                                    "16-true",
                                                    "16-mixed",
                                                    "bf16-true",
                                                    "bf16-mixed",
                                                    "32-true",
                                                    "64-true"};
const std::vector<int> kPrecisionInts = {64, 32, 16};
const std::map<std::string, std::string> kPrecisionAliases = {
    {"64", "64-true"}, {"32", "32-true"}, {"16", "16-mixed"}, {"bf16", "bf16-mixed"}};

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string allowed_precision_values() {
  std::vector<std::string> items;
  for (const auto& s : kPrecisionStrings) items.push_back(fmt::format("'{}'", s));
  for (int i : kPrecisionInts) items.push_back(std::to_string(i));
  for (const auto& alias : {"64", "32", "16", "bf16"}) items.push_back(fmt::format("'{}'", alias));
  return fmt::format("({})", fmt::join(items, ", "));
}

// Python's _argument_from_env: the environment wins; with the CLI in use, an explicit
// non-default value in code that disagrees with it is an error.
std::optional<std::string> argument_from_env(const std::string& name,
                                             const std::string& current_str,
                                             const std::string& current_repr,
                                             const std::string& default_str) {
  std::string upper = name;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const char* env = std::getenv(("LT_" + upper).c_str());
  if (env == nullptr) return std::nullopt;
  const std::string env_value = env;
  if (env_value != current_str && current_str != default_str && using_cli()) {
    throw std::invalid_argument(fmt::format(
        "Your code has `Fabric({}={}, ...)` but it conflicts with the value `--{}={}` set through "
        "the CLI. Remove it either from the CLI or from the Fabric options.",
        name, current_repr, name, env_value));
  }
  return env_value;
}

template <typename T>
std::string object_str(const std::shared_ptr<T>& object, const std::string& kind) {
  return object ? fmt::format("<{} object>", kind) : "None";
}

}  // namespace

bool using_cli() { return env_int("LT_CLI_USED", "0 or 1").value_or(0) != 0; }

const std::vector<std::string>& precision_choices() {
  static const std::vector<std::string> all = [] {
    auto names = kPrecisionStrings;
    for (const auto& [alias, target] : kPrecisionAliases) names.push_back(alias);
    return names;
  }();
  return all;
}

std::optional<std::string> convert_precision(const PrecisionArg& precision) {
  const auto& value = precision.value();
  std::string text;
  if (std::holds_alternative<std::monostate>(value)) return std::nullopt;
  if (const auto* n = std::get_if<int>(&value)) {
    if (std::find(kPrecisionInts.begin(), kPrecisionInts.end(), *n) == kPrecisionInts.end()) {
      text.clear();
    } else {
      text = std::to_string(*n);
    }
  } else if (const auto* s = std::get_if<std::string>(&value)) {
    text = *s;
    if (!contains(kPrecisionStrings, text) && kPrecisionAliases.count(text) == 0) text.clear();
  } else {
    return std::nullopt;  // a plugin object: handled with the plugins
  }
  if (text.empty()) {
    throw std::invalid_argument(fmt::format("Precision {} is invalid. Allowed precision values: {}",
                                            precision.repr(), allowed_precision_values()));
  }
  if (auto alias = kPrecisionAliases.find(text); alias != kPrecisionAliases.end()) {
    if (text != "32" && text != "64") {
      utilities::rank_zero_warn(fmt::format(
          "`precision={}` is supported for historical reasons but its usage is discouraged. Please "
          "set your precision to {} instead!",
          text, alias->second));
    }
    return alias->second;
  }
  return text;
}

Connector::Connector(FabricOptions options) {
  apply_env_overrides(options);
  check_config(options);
  check_device_config(options);
  init_accelerator(options);
  // A plugin wins; otherwise Python's detection order (TorchElastic, SLURM, MPI, Lightning).
  if (!cluster_environment) cluster_environment = environments::detect_cluster_environment();
  choose_strategy();
  init_precision();
  wire_strategy();
}

void Connector::apply_env_overrides(FabricOptions& options) {
  const auto& acc = options.accelerator;
  const std::string acc_str = acc.is_name() ? acc.name() : object_str(acc.object(), "Accelerator");
  const std::string acc_repr = acc.is_name() ? fmt::format("'{}'", acc.name()) : acc_str;
  if (auto env = argument_from_env("accelerator", acc_str, acc_repr, "auto"))
    options.accelerator = *env;

  const auto& st = options.strategy;
  const std::string st_str = st.is_name() ? st.name() : object_str(st.object(), "Strategy");
  const std::string st_repr = st.is_name() ? fmt::format("'{}'", st.name()) : st_str;
  if (auto env = argument_from_env("strategy", st_str, st_repr, "auto")) options.strategy = *env;

  if (auto env =
          argument_from_env("devices", options.devices.str(), options.devices.repr(), "auto")) {
    options.devices = *env;
  }

  const std::string nodes = std::to_string(options.num_nodes);
  if (auto env = argument_from_env("num_nodes", nodes, nodes, "1")) {
    try {
      std::size_t used = 0;
      options.num_nodes = std::stoi(*env, &used);
      if (used != env->size()) throw std::invalid_argument("trailing characters");
    } catch (const std::exception&) {
      throw std::invalid_argument(
          fmt::format("LT_NUM_NODES='{}' is not an integer; set it to the number of nodes.", *env));
    }
  }

  if (auto env = argument_from_env("precision", options.precision.str(), options.precision.repr(),
                                   "None")) {
    options.precision = *env;
  }
}

void Connector::check_config(const FabricOptions& options) {
  // 1. strategy name
  if (options.strategy.is_name()) {
    strategy_flag_ = options.strategy.name();
    for (auto& c : strategy_flag_)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const auto& registry = strategies::StrategyRegistry::global();
    if (strategy_flag_ != "auto" && !registry.contains(strategy_flag_)) {
      throw std::invalid_argument(fmt::format(
          "You selected an invalid strategy name: `strategy='{}'`. It must be either a string or "
          "an instance of `cppfabric::strategies::Strategy`. Valid names: auto, {}. Also "
          "recognised, but not available in cppfabric: {}.",
          strategy_flag_, fmt::join(registry.available_strategies(), ", "),
          fmt::join(registry.unavailable_strategies(), ", ")));
    }
  } else {
    strategy_object_ = options.strategy.object();
    if (!strategy_object_) {
      throw TypeError(
          "FabricOptions::strategy holds a null Strategy pointer; pass a name or an object.");
    }
  }

  // 2. accelerator name
  if (options.accelerator.is_name()) {
    accelerator_flag_ = options.accelerator.name();
    if (!contains(kAcceleratorNames, accelerator_flag_) && accelerator_flag_ != "auto" &&
        accelerator_flag_ != "gpu") {
      throw std::invalid_argument(
          fmt::format("You selected an invalid accelerator name: `accelerator='{}'`. Available "
                      "names are: auto, "
                      "gpu, {}.",
                      accelerator_flag_, fmt::join(kAcceleratorNames, ", ")));
    }
  } else {
    accelerator_object_ = options.accelerator.object();
    if (!accelerator_object_) {
      throw TypeError(
          "FabricOptions::accelerator holds a null Accelerator pointer; pass a name or an object.");
    }
  }

  // 3. precision value
  const std::optional<std::string> precision_input = convert_precision(options.precision);

  // 4. plugins (a precision object given as `precision` counts as a precision plugin)
  std::vector<std::shared_ptr<Plugin>> plugins = options.plugins;
  if (const auto* p =
          std::get_if<std::shared_ptr<precision::Precision>>(&options.precision.value())) {
    if (!*p) throw TypeError("FabricOptions::precision holds a null Precision pointer.");
    plugins.push_back(*p);
  }
  std::vector<std::pair<std::string, int>> counts;  // insertion order, as Python's Counter
  auto count = [&counts](const std::string& kind) {
    for (auto& [k, n] : counts) {
      if (k == kind) return void(++n);
    }
    counts.emplace_back(kind, 1);
  };
  for (const auto& plugin : plugins) {
    if (!plugin) {
      throw TypeError(
          "Found a null plugin in `plugins`. Expected one of: Precision, CheckpointIO, "
          "ClusterEnvironment.");
    }
    if (auto p = std::dynamic_pointer_cast<precision::Precision>(plugin)) {
      precision_instance_ = p;
      count("Precision");
    } else if (auto io = std::dynamic_pointer_cast<checkpoint::CheckpointIO>(plugin)) {
      checkpoint_io = io;
      count("CheckpointIO");
    } else if (auto env = std::dynamic_pointer_cast<environments::ClusterEnvironment>(plugin)) {
      cluster_environment = env;
      count("ClusterEnvironment");
    } else {
      throw TypeError(
          fmt::format("Found invalid type for plugin {}. Expected one of: Precision, CheckpointIO, "
                      "ClusterEnvironment.",
                      plugin->describe()));
    }
  }
  std::vector<std::string> duplicated;
  for (const auto& [kind, n] : counts) {
    if (n > 1) duplicated.push_back(kind);
  }
  if (!duplicated.empty()) {
    throw std::invalid_argument(fmt::format(
        "Received multiple values for {} flags in `plugins`. Expected one value for each type at "
        "most.",
        fmt::join(duplicated, ", ")));
  }
  if (precision_instance_ && precision_input) {
    throw std::invalid_argument(
        fmt::format("Received both `precision={}` and `plugins={}`. Choose one.", *precision_input,
                    precision_instance_->describe()));
  }
  precision_input_ = precision_input.value_or("32-true");

  // 5. what a Strategy object already carries conflicts with the matching flags
  if (strategy_object_) {
    if (strategy_object_->accelerator()) {
      if (!(accelerator_flag_ == "auto" && !accelerator_object_)) {
        throw std::invalid_argument(
            "accelerator set through both strategy class and accelerator flag, choose one");
      }
      accelerator_object_ = strategy_object_->accelerator();
      accelerator_flag_.clear();
    }
    if (strategy_object_->precision()) {
      if (precision_instance_) {
        throw std::invalid_argument(
            "precision set through both strategy class and plugins, choose one");
      }
      precision_instance_ = strategy_object_->precision();
    }
    if (strategy_object_->checkpoint_io()) {
      if (checkpoint_io) {
        throw std::invalid_argument(
            "checkpoint_io set through both strategy class and plugins, choose one");
      }
      checkpoint_io = strategy_object_->checkpoint_io();
    }
    if (strategy_object_->cluster_environment()) {
      if (cluster_environment) {
        throw std::invalid_argument(
            "cluster_environment set through both strategy class and plugins, choose one");
      }
      cluster_environment = strategy_object_->cluster_environment();
    }
    const auto& devices = strategy_object_->parallel_devices();
    if (!devices.empty()) {
      const std::string current =
          accelerator_object_ ? accelerator_object_->name() : accelerator_flag_;
      if (devices.front().is_cpu()) {
        if (current != "auto" && current != "cpu") {
          throw std::invalid_argument(fmt::format(
              "CPU parallel_devices set through the {} strategy, but accelerator set to {}, please "
              "choose one device type",
              strategy_object_->name(), current));
        }
        if (!accelerator_object_) accelerator_flag_ = "cpu";
      } else if (devices.front().is_cuda()) {
        if (current != "auto" && current != "cuda" && current != "gpu") {
          throw std::invalid_argument(fmt::format(
              "GPU parallel_devices set through the {} strategy, but accelerator set to {}, please "
              "choose one device type",
              strategy_object_->name(), current));
        }
        if (!accelerator_object_) accelerator_flag_ = "cuda";
      }
      parallel_devices = devices;
    }
  }
}

void Connector::check_device_config(const FabricOptions& options) {
  if (options.num_nodes < 1) {
    throw std::invalid_argument(
        fmt::format("`num_nodes` must be a positive integer, but got {}.", options.num_nodes));
  }
  num_nodes = options.num_nodes;
  devices_flag_ = options.devices;
  const auto& value = devices_flag_.value();
  const auto* n = std::get_if<int>(&value);
  const auto* s = std::get_if<std::string>(&value);
  const auto* list = std::get_if<std::vector<int>>(&value);
  if ((n && *n == 0) || (s && *s == "0") || (list && list->empty())) {
    const std::string name =
        accelerator_object_ ? accelerator_object_->class_name() : accelerator_flag_;
    const bool cpu = name == "cpu" || name == "CPUAccelerator" ||
                     (name == "auto" && accelerators::CUDAAccelerator::device_count() == 0);
    throw std::invalid_argument(fmt::format(
        "`Fabric(devices={})` value is not a valid input using {} accelerator. Select at least one "
        "device: {}",
        devices_flag_.repr(), name,
        cpu ? "on the CPU, devices is the number of processes (1, 2, ...) or \"auto\" (1)."
            : "a count such as 1, -1 for all GPUs, or indices such as \"0,1\"."));
  }
}

void Connector::init_accelerator(const FabricOptions& options) {
  if (!accelerator_object_) {
    if (accelerator_flag_ == "auto") {
      accelerator_flag_ = accelerators::CUDAAccelerator::device_count() > 0 ? "cuda" : "cpu";
    } else if (accelerator_flag_ == "gpu") {
      if (accelerators::CUDAAccelerator::device_count() == 0) {
        throw std::runtime_error(
            "No supported gpu backend found! `accelerator='gpu'` needs a CUDA device; none is "
            "visible. Use accelerator='cpu' or 'auto'.");
      }
      accelerator_flag_ = "cuda";
    }
    if (accelerator_flag_ == "cpu") {
      accelerator_object_ = std::make_shared<accelerators::CPUAccelerator>();
    } else if (accelerator_flag_ == "cuda") {
      accelerator_object_ = std::make_shared<accelerators::CUDAAccelerator>();
    }
  }
  std::vector<std::string> available = {"cpu"};
  if (accelerators::CUDAAccelerator::device_count() > 0) available.push_back("cuda");
  if (!accelerator_object_ || !accelerator_object_->is_available()) {
    const std::string cls = accelerator_object_          ? accelerator_object_->class_name()
                            : accelerator_flag_ == "mps" ? "MPSAccelerator"
                                                         : "XLAAccelerator";
    throw std::runtime_error(fmt::format(
        "`{}` can not run on your system since the accelerator is not available. The following "
        "accelerator(s) is available and can be passed into `accelerator`: ['{}'].",
        cls, fmt::join(available, "', '")));
  }
  if (devices_flag_.is_auto()) devices_flag_ = accelerator_object_->auto_device_count();
  auto devices = accelerator_object_->parse_devices(devices_flag_);
  if (parallel_devices.empty()) parallel_devices = std::move(devices);
}

void Connector::choose_strategy() {
  const std::string acc = accelerator_object_->name();
  if (strategy_flag_ == "auto") {
    if (num_nodes > 1 || parallel_devices.size() > 1) {
      strategy_flag_ = "ddp";
    } else {
      strategy_flag_ = "single_device";
    }
  }
  if (strategy_object_) {
    strategy = strategy_object_;
    return;
  }
  // Python refuses FSDP on CPUs; cppfabric runs it over Gloo there (docs/sharding.md).
  if (strategy_flag_ == "single_device" && num_nodes > 1) {
    throw std::invalid_argument(fmt::format(
        "strategy='single_device' runs on one device, but num_nodes={}. Use strategy='ddp'.",
        num_nodes));
  }
  strategy = strategies::StrategyRegistry::global().create(strategy_flag_);
}

void Connector::init_precision() {
  if (precision_instance_) {
    precision = precision_instance_;
    return;
  }
  if (precision_input_ == "32-true") {
    precision = std::make_shared<precision::Precision>();
    return;
  }
  if (precision_input_ == "64-true") {
    precision = std::make_shared<precision::DoublePrecision>();
    return;
  }
  if (precision_input_.rfind("transformer-engine", 0) == 0) {
    throw NotYetAvailableError(fmt::format(
        "precision='{}' needs NVIDIA Transformer Engine, a Python library that cppfabric cannot "
        "use. Choose one of: '32-true', '64-true', '16-mixed', 'bf16-mixed', '16-true', "
        "'bf16-true'.",
        precision_input_));
  }
  if (precision_input_ == "16-true" || precision_input_ == "bf16-true") {
    precision = std::make_shared<precision::HalfPrecision>(precision_input_);
    return;
  }
  // The accelerator as resolved ("auto" -> "cpu"/"cuda"), or an object's own name.
  const std::string accelerator_name = accelerator_object_->name();
  if (precision_input_ == "16-mixed" && accelerator_name == "cpu") {
    utilities::rank_zero_warn(
        "You passed `Fabric(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is not "
        "supported on CPU. Using `precision='bf16-mixed'` instead.");
    precision_input_ = "bf16-mixed";
  }
  utilities::rank_zero_info(precision_input_ == "16-mixed"
                                ? "Using 16-bit Automatic Mixed Precision (AMP)"
                                : "Using bfloat16 Automatic Mixed Precision (AMP)");
  precision = std::make_shared<precision::MixedPrecision>(
      precision_input_, accelerator_name == "cpu" ? "cpu" : "cuda");
}

void Connector::wire_strategy() {
  accelerator = accelerator_object_;
  strategy->set_accelerator(accelerator);
  strategy->set_precision(precision);
  // Python's Strategy.checkpoint_io: the torch.save-compatible format unless a plugin or the
  // strategy object brought one.
  if (!checkpoint_io) checkpoint_io = std::make_shared<checkpoint::TorchCheckpointIO>();
  strategy->set_checkpoint_io(checkpoint_io);
  strategy->set_cluster_environment(cluster_environment);
  strategy->set_parallel_devices(parallel_devices);
  strategy->set_num_nodes(num_nodes);
  strategy->set_world_ranks();
}

}  // namespace cppfabric::detail
