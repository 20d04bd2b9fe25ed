// The strategies: the registry (Python's 20 names, user registrations, why a name cannot run),
// the checkpoint hooks that fabric.save / load / load_raw go through, and the built-in
// strategies chosen by name.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cppfabric/cppfabric.hpp>
#include <cppfabric/strategies/registry.hpp>
#include <map>
#include <sstream>

#include "test_utils.hpp"
#include "unit/models.hpp"

using cppfabric::Fabric;
using cppfabric::State;
using cppfabric::Value;
using cppfabric::strategies::StrategyRegistry;
using cppfabric::testing::Net;
using Availability = StrategyRegistry::Availability;

namespace {

class StrategiesTest : public cppfabric::testing::FabricEnvTest {};

// Python Lightning Fabric 2.6's STRATEGY_REGISTRY.
const std::vector<std::string> kPythonNames = {"ddp",
                                               "ddp_find_unused_parameters_true",
                                               "ddp_fork",
                                               "ddp_notebook",
                                               "ddp_spawn",
                                               "deepspeed",
                                               "deepspeed_stage_1",
                                               "deepspeed_stage_1_offload",
                                               "deepspeed_stage_2",
                                               "deepspeed_stage_2_offload",
                                               "deepspeed_stage_3",
                                               "deepspeed_stage_3_offload",
                                               "deepspeed_stage_3_offload_nvme",
                                               "dp",
                                               "fsdp",
                                               "fsdp_cpu_offload",
                                               "single_tpu",
                                               "single_xla",
                                               "xla",
                                               "xla_fsdp"};

// A CheckpointIO that keeps checkpoints in memory.
struct MemoryIO : cppfabric::checkpoint::CheckpointIO {
  std::map<std::string, Value> files;
  void save_checkpoint(const Value& checkpoint, const std::string& path) override {
    // A copy, as a file would hold: module state dicts share the parameters' storage.
    files[path] = cppfabric::checkpoint::from_torch_bytes(
        cppfabric::checkpoint::to_torch_bytes(checkpoint), path);
  }
  Value load_checkpoint(const std::string& path) override {
    auto it = files.find(path);
    if (it == files.end()) throw std::runtime_error("no checkpoint " + path);
    return it->second;
  }
  void remove_checkpoint(const std::string& path) override { files.erase(path); }
};

// A strategy that records what Fabric asks of its checkpoint hooks, then does the default.
struct RecordingStrategy : cppfabric::strategies::SingleDeviceStrategy {
  std::string name() const override { return "recording"; }
  void save_checkpoint(const std::string& path, const State& state,
                       const cppfabric::strategies::SaveFilter& filter) override {
    calls.push_back("save " + path);
    SingleDeviceStrategy::save_checkpoint(path, state, filter);
  }
  State load_checkpoint(const std::string& path, State& state, bool strict) override {
    calls.push_back("load " + path);
    return SingleDeviceStrategy::load_checkpoint(path, state, strict);
  }
  void load_raw_checkpoint(const std::string& path, cppfabric::Stateful& object,
                           bool strict) override {
    calls.push_back("load_raw " + path);
    SingleDeviceStrategy::load_raw_checkpoint(path, object, strict);
  }
  std::vector<std::string> calls;
};

}  // namespace

// ------------------------------------------------------------------ registry

TEST(StrategyRegistry, KnowsEveryPythonName) {
  const auto& registry = StrategyRegistry::global();
  for (const auto& name : kPythonNames) EXPECT_TRUE(registry.contains(name)) << name;
  auto expected = kPythonNames;
  expected.push_back("single_device");  // cppfabric's name for what "auto" picks on one device
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(registry.names(), expected);
  EXPECT_EQ(registry.available_strategies(),
            (std::vector<std::string>{"ddp", "ddp_find_unused_parameters_true", "deepspeed",
                                      "deepspeed_stage_1", "deepspeed_stage_2", "fsdp",
                                      "fsdp_cpu_offload", "single_device"}));
}

TEST(StrategyRegistry, MatchesPythonRegistry) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "no bootstrapped Python environment";
  int status = 0;
  const std::string out = cppfabric::testing::run_command(
      *python +
          " -c 'from lightning.fabric.strategies import STRATEGY_REGISTRY as R; "
          "print(\" \".join(sorted(R)))' 2>/dev/null",
      &status);
  if (status != 0) GTEST_SKIP() << "lightning is not importable";
  std::istringstream words(out);
  std::vector<std::string> names;
  for (std::string w; words >> w;) names.push_back(w);
  EXPECT_EQ(names, kPythonNames);
}

TEST(StrategyRegistry, EveryNameCreatesOrSaysWhy) {
  const auto& registry = StrategyRegistry::global();
  for (const auto& name : registry.names()) {
    const auto entry = registry.get(name);
    EXPECT_FALSE(entry.description.empty()) << name;
    switch (entry.availability) {
      case Availability::Available:
        EXPECT_NE(registry.create(name), nullptr) << name;
        break;
      case Availability::Upcoming:
        EXPECT_THROW_WITH(registry.create(name), cppfabric::NotYetAvailableError,
                          "strategy='" + name + "'", "not yet available", entry.reason);
        break;
      case Availability::Unsupported:
        EXPECT_THROW_WITH(registry.create(name), cppfabric::NotSupportedError,
                          "strategy='" + name + "'", "does not support", entry.reason);
        break;
    }
  }
}

TEST(StrategyRegistry, OwnTable) {
  StrategyRegistry registry;
  EXPECT_TRUE(registry.names().empty());
  EXPECT_THROW_WITH(registry.get("ddp"), std::out_of_range, "'ddp' not found in registry");
  registry.register_unavailable("x", Availability::Unsupported, "because of y", "an x");
  EXPECT_THROW_WITH(registry.create("x"), cppfabric::NotSupportedError, "because of y");
  EXPECT_THROW_WITH(registry.register_strategy("y", nullptr), std::invalid_argument, "'y'",
                    "factory is empty");
  EXPECT_THROW_WITH(registry.register_unavailable("x", Availability::Upcoming, "later"),
                    std::invalid_argument, "'x' is already present in the registry");
  EXPECT_TRUE(registry.remove("x"));
  EXPECT_FALSE(registry.remove("x"));
}

TEST_F(StrategiesTest, PythonOnlyNamesSayWhyAndWhatToUse) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"xla", "torch_xla"},
      {"single_tpu", "torch_xla"},
      {"dp", "strategy='ddp'"},
      {"ddp_spawn", "strategy='ddp'"},
      {"ddp_notebook", "strategy='ddp'"},
      {"deepspeed_stage_3", "strategy='fsdp'"},
      {"deepspeed_stage_2_offload", "fsdp_cpu_offload"}};
  for (const auto& [name, hint] : cases) {
    EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .strategy = name}),
                      cppfabric::NotSupportedError, "strategy='" + name + "'", hint);
  }
}

TEST_F(StrategiesTest, UserRegisteredStrategy) {
  struct Mine : cppfabric::strategies::SingleDeviceStrategy {
    std::string name() const override { return "mine"; }
  };
  auto& registry = StrategyRegistry::global();
  registry.register_strategy(
      "mine", [] { return std::make_shared<Mine>(); }, "my own");
  struct Unregister {
    ~Unregister() { StrategyRegistry::global().remove("mine"); }
  } cleanup;
  EXPECT_THROW_WITH(registry.register_strategy("mine", [] { return std::make_shared<Mine>(); }),
                    std::invalid_argument, "'mine' is already present in the registry");

  Fabric fabric({.accelerator = "cpu", .strategy = "mine"});
  EXPECT_EQ(fabric.strategy()->name(), "mine");
  EXPECT_NE(fabric.strategy()->checkpoint_io(), nullptr) << "the connector wires it";
  EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .strategy = "minee"}), std::invalid_argument,
                    "`strategy='minee'`", "mine");

  registry.register_strategy(
      "mine", [] { return std::make_shared<cppfabric::strategies::SingleDeviceStrategy>(); },
      "replaced", /*override=*/true);
  EXPECT_EQ(registry.get("mine").description, "replaced");
}

TEST_F(StrategiesTest, DdpByName) {
  Fabric ddp({.accelerator = "cpu", .strategy = "ddp"});
  EXPECT_EQ(ddp.strategy()->name(), "ddp");
  EXPECT_EQ(ddp.world_size(), 1);
  Fabric unused({.accelerator = "cpu", .strategy = "ddp_find_unused_parameters_true"});
  EXPECT_EQ(unused.strategy()->name(), "ddp_find_unused_parameters_true");
}

TEST_F(StrategiesTest, ShardingStrategiesByNameRunOnCpu) {
  // Python refuses FSDP on CPUs; cppfabric runs it over Gloo (docs/sharding.md).
  for (const char* name : {"fsdp", "fsdp_cpu_offload", "deepspeed_stage_1", "deepspeed_stage_2"}) {
    Fabric fabric({.accelerator = "cpu", .strategy = name});
    EXPECT_EQ(fabric.strategy()->name(), name);
    EXPECT_TRUE(fabric.strategy()->is_parallel());
  }
  Fabric deepspeed({.accelerator = "cpu", .strategy = "deepspeed"});
  EXPECT_EQ(deepspeed.strategy()->name(), "deepspeed_stage_2") << "DeepSpeed's default stage";
}

TEST_F(StrategiesTest, ShardingOptionsAreValidated) {
  using namespace cppfabric::strategies;
  EXPECT_THROW_WITH(FSDPStrategy(FSDPOptions{.sharding_strategy = "FULL"}), std::invalid_argument,
                    "'FULL'", "SHARD_GRAD_OP");
  EXPECT_NO_THROW(FSDPStrategy(FSDPOptions{.sharding_strategy = "HYBRID_SHARD"}));
  EXPECT_THROW_WITH(FSDPStrategy(FSDPOptions{.state_dict_type = "local"}), std::invalid_argument,
                    "'local'", "'full'");
  EXPECT_THROW_WITH(
      FSDPStrategy(
          FSDPOptions{.mixed_precision = FSDPMixedPrecision{.reduce_dtype = c10::ScalarType::Int}}),
      std::invalid_argument, "reduce_dtype is Int", "torch::kBFloat16");
  EXPECT_THROW_WITH(ZeROStrategy(ZeROOptions{.stage = 3}), cppfabric::NotSupportedError,
                    "strategy='fsdp'");
  EXPECT_THROW_WITH(ZeROStrategy(ZeROOptions{.stage = 0}), std::invalid_argument, "stage 0");
  EXPECT_THROW_WITH(ZeROStrategy(ZeROOptions{.config = "ds_config.json"}),
                    cppfabric::NotSupportedError, "not the DeepSpeed library");
  EXPECT_THROW_WITH(ZeROStrategy(ZeROOptions{.offload_optimizer = true}),
                    cppfabric::NotSupportedError, "not the DeepSpeed library");
}

TEST_F(StrategiesTest, SingleDeviceRejectsSeveralDevices) {
  EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .strategy = "single_device", .devices = 2}),
                    std::invalid_argument, "single_device", "2 devices");
}

// ------------------------------------------------------------------ checkpoint hooks

TEST_F(StrategiesTest, DefaultCheckpointIoIsTorchSave) {
  Fabric fabric({.accelerator = "cpu"});
  EXPECT_NE(std::dynamic_pointer_cast<cppfabric::checkpoint::TorchCheckpointIO>(
                fabric.strategy()->checkpoint_io()),
            nullptr);
}

TEST_F(StrategiesTest, CheckpointIoPluginWritesAndReads) {
  auto io = std::make_shared<MemoryIO>();
  Fabric fabric({.accelerator = "cpu", .plugins = {io}});
  EXPECT_EQ(fabric.strategy()->checkpoint_io(), io);
  Net model;
  auto net = fabric.setup(model);
  const auto weight = model->fc1->weight.detach().clone();
  fabric.save("memory://a", {{"model", net}, {"epoch", 3}});
  ASSERT_EQ(io->files.count("memory://a"), 1u);
  EXPECT_EQ(io->files["memory://a"].at("epoch").to_int(), 3);
  {
    torch::NoGradGuard no_grad;
    model->fc1->weight.zero_();
  }
  State remainder = fabric.load("memory://a", {{"model", net}});
  EXPECT_EQ(remainder.get<int64_t>("epoch"), 3);
  EXPECT_TRUE(torch::equal(model->fc1->weight, weight));
}

TEST_F(StrategiesTest, FabricDelegatesToTheStrategyHooks) {
  auto strategy = std::make_shared<RecordingStrategy>();
  auto io = std::make_shared<MemoryIO>();
  Fabric fabric({.accelerator = "cpu", .strategy = strategy, .plugins = {io}});
  Net model;
  auto net = fabric.setup(model);
  fabric.save("memory://full", {{"model", net}});
  fabric.load("memory://full", {{"model", net}});
  io->files["memory://raw"] = io->files["memory://full"].at("model");
  fabric.load_raw("memory://raw", net);
  EXPECT_EQ(strategy->calls, (std::vector<std::string>{"save memory://full", "load memory://full",
                                                       "load_raw memory://raw"}));
}

TEST_F(StrategiesTest, UnwiredStrategyHasNoCheckpointIo) {
  cppfabric::strategies::SingleDeviceStrategy strategy;
  EXPECT_THROW_WITH(strategy.save_checkpoint("x.ckpt", State{{"a", 1}}), std::logic_error,
                    "single_device", "no CheckpointIO");
}
