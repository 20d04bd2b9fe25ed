// The connector's rules: every option Python Fabric validates, with its error, plus the
// LT_* environment overrides. Runs without a GPU (CUDA-only paths use fake device counts).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>

#include "test_utils.hpp"

using cppfabric::Fabric;
using cppfabric::FabricOptions;
using cppfabric::testing::CaptureConsole;
using cppfabric::testing::ScopedEnv;
namespace acc = cppfabric::accelerators;

namespace {

class ConnectorTest : public cppfabric::testing::FabricEnvTest {};

bool has_gpu() { return acc::CUDAAccelerator::device_count() > 0; }

// A stand-in accelerator with N devices, used where Python's tests mock torch.cuda.
struct FakeGPUAccelerator : acc::Accelerator {
  explicit FakeGPUAccelerator(int n) : n(n) {}
  std::string name() const override { return "cuda"; }
  std::string class_name() const override { return "FakeGPUAccelerator"; }
  bool is_available() const override { return true; }
  int auto_device_count() const override { return n; }
  std::vector<c10::Device> parse_devices(const cppfabric::DevicesArg& d) const override {
    std::vector<c10::Device> out;
    for (int i : acc::CUDAAccelerator::parse_gpu_ids(d, n)) out.emplace_back(c10::kCUDA, i);
    return out;
  }
  void setup_device(const c10::Device&) override {}
  int n;
};

struct MyEnvironment : cppfabric::environments::ClusterEnvironment {
  bool creates_processes_externally() const override { return false; }
  std::string main_address() const override { return "127.0.0.1"; }
  int main_port() const override { return 1234; }
  int world_size() const override { return 1; }
  int global_rank() const override { return 0; }
  int local_rank() const override { return 0; }
  int node_rank() const override { return 0; }
};

struct MyIO : cppfabric::checkpoint::CheckpointIO {
  void remove_checkpoint(const std::string&) override {}
};

struct NotAPlugin : cppfabric::Plugin {};

}  // namespace

// ------------------------------------------------------------------ defaults and properties

TEST_F(ConnectorTest, DefaultsResolveToOneDeviceAnd32True) {
  Fabric fabric;
  EXPECT_EQ(fabric.strategy()->name(), "single_device");
  EXPECT_EQ(fabric.strategy()->precision()->name(), "32-true");
  EXPECT_EQ(fabric.accelerator()->name(), has_gpu() ? "cuda" : "cpu");
  EXPECT_EQ(fabric.global_rank(), 0);
  EXPECT_EQ(fabric.local_rank(), 0);
  EXPECT_EQ(fabric.node_rank(), 0);
  EXPECT_EQ(fabric.world_size(), 1);
  EXPECT_TRUE(fabric.is_global_zero());
  EXPECT_TRUE(std::dynamic_pointer_cast<cppfabric::environments::LightningEnvironment>(
      fabric.strategy()->cluster_environment()))
      << "no scheduler variables here: Fabric's own environment";
}

TEST_F(ConnectorTest, CpuSingleDevice) {
  Fabric fabric({.accelerator = "cpu", .strategy = "single_device", .devices = 1});
  EXPECT_EQ(fabric.device(), c10::Device(c10::kCPU));
  EXPECT_EQ(fabric.accelerator()->class_name(), "CPUAccelerator");
}

TEST_F(ConnectorTest, StrategyNameIsLowerCased) {
  Fabric fabric({.accelerator = "cpu", .strategy = "SINGLE_DEVICE"});
  EXPECT_EQ(fabric.strategy()->name(), "single_device");
}

// ------------------------------------------------------------------ accelerator

TEST_F(ConnectorTest, InvalidAcceleratorName) {
  EXPECT_THROW_WITH(Fabric({.accelerator = "tpuu"}), std::invalid_argument,
                    "invalid accelerator name", "`accelerator='tpuu'`", "auto", "cpu", "cuda");
  // Not lower-cased, as in Python.
  EXPECT_THROW_WITH(Fabric({.accelerator = "CPU"}), std::invalid_argument, "'CPU'");
}

TEST_F(ConnectorTest, MpsAndTpuAreRejectedOnThisPlatform) {
  EXPECT_THROW_WITH(Fabric({.accelerator = "mps"}), std::runtime_error, "MPSAccelerator",
                    "not available", "'cpu'");
  EXPECT_THROW_WITH(Fabric({.accelerator = "tpu"}), std::runtime_error, "XLAAccelerator",
                    "not available");
}

TEST_F(ConnectorTest, CudaAndGpuWithoutAGpu) {
  if (has_gpu()) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW_WITH(Fabric({.accelerator = "cuda"}), std::runtime_error, "CUDAAccelerator",
                    "not available", "'cpu'");
  EXPECT_THROW_WITH(Fabric({.accelerator = "gpu"}), std::runtime_error,
                    "No supported gpu backend found!");
}

TEST_F(ConnectorTest, CudaOnAGpu) {
  if (!has_gpu()) GTEST_SKIP() << "needs a GPU";
  Fabric fabric({.accelerator = "gpu", .devices = 1});
  EXPECT_EQ(fabric.device(), c10::Device(c10::kCUDA, 0));
}

TEST_F(ConnectorTest, AcceleratorObject) {
  auto fake = std::make_shared<FakeGPUAccelerator>(4);
  Fabric fabric({.accelerator = fake, .devices = "2,"});
  EXPECT_EQ(fabric.accelerator(), fake);
  EXPECT_EQ(fabric.device(), c10::Device(c10::kCUDA, 2));
}

// ------------------------------------------------------------------ devices

TEST_F(ConnectorTest, ZeroDevicesIsInvalid) {
  for (const cppfabric::DevicesArg& devices : {cppfabric::DevicesArg(0), cppfabric::DevicesArg("0"),
                                               cppfabric::DevicesArg(std::vector<int>{})}) {
    EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .devices = devices}), std::invalid_argument,
                      "`Fabric(devices=" + devices.repr() + ")` value is not a valid input",
                      "cpu accelerator");
  }
}

TEST_F(ConnectorTest, CpuDevicesMustBeAPositiveInt) {
  for (const cppfabric::DevicesArg& devices :
       {cppfabric::DevicesArg(-1), cppfabric::DevicesArg("1,2"), cppfabric::DevicesArg({0, 1}),
        cppfabric::DevicesArg("-1"), cppfabric::DevicesArg("x")}) {
    EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .devices = devices}), cppfabric::TypeError,
                      "`devices=" + devices.repr() + "`", "int > 0");
  }
}

TEST_F(ConnectorTest, SeveralDevicesOrNodesSelectDdp) {
  Fabric two({.accelerator = "cpu", .devices = 2});
  EXPECT_EQ(two.strategy()->name(), "ddp");
  EXPECT_TRUE(two.strategy()->is_parallel());
  EXPECT_EQ(two.world_size(), 2);
  EXPECT_EQ(two.global_rank(), 0);
  ASSERT_TRUE(two.strategy()->distributed_sampler_kwargs().has_value());
  EXPECT_EQ(two.strategy()->distributed_sampler_kwargs()->num_replicas, 2);
  Fabric nodes({.accelerator = "cpu", .num_nodes = 2});
  EXPECT_EQ(nodes.strategy()->name(), "ddp");
  EXPECT_EQ(nodes.world_size(), 2);
  Fabric gpus({.accelerator = std::make_shared<FakeGPUAccelerator>(4), .devices = -1});
  EXPECT_EQ(gpus.strategy()->name(), "ddp");
  EXPECT_EQ(gpus.world_size(), 4);
}

TEST_F(ConnectorTest, DdpRanksFollowTheEnvironment) {
  ScopedEnv local("LOCAL_RANK", "1");
  ScopedEnv node("NODE_RANK", "1");
  Fabric fabric({.accelerator = "cpu", .devices = 3, .num_nodes = 2});
  EXPECT_EQ(fabric.local_rank(), 1);
  EXPECT_EQ(fabric.node_rank(), 1);
  EXPECT_EQ(fabric.global_rank(), 4);
  EXPECT_EQ(fabric.world_size(), 6);
  EXPECT_EQ(fabric.strategy()->distributed_sampler_kwargs()->rank, 4);
}

TEST_F(ConnectorTest, MultiDeviceNeedsLaunch) {
  Fabric fabric({.accelerator = "cpu", .devices = 2});
  torch::nn::Linear model(2, 2);
  EXPECT_THROW_WITH(fabric.setup(model), std::runtime_error, "you must call `.launch()`");
  EXPECT_THROW_WITH(fabric.barrier(), std::runtime_error, "`.launch()`");
}

// ------------------------------------------------------------------ num_nodes

TEST_F(ConnectorTest, NumNodesMustBePositive) {
  for (int n : {0, -1}) {
    EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .num_nodes = n}), std::invalid_argument,
                      "`num_nodes` must be a positive integer, but got " + std::to_string(n));
  }
}

// ------------------------------------------------------------------ strategy

TEST_F(ConnectorTest, InvalidStrategyName) {
  EXPECT_THROW_WITH(Fabric({.strategy = "ddp_spawnn"}), std::invalid_argument,
                    "invalid strategy name", "`strategy='ddp_spawnn'`", "auto", "ddp",
                    "single_device");
}

TEST_F(ConnectorTest, StrategyIsValidatedBeforeAccelerator) {
  EXPECT_THROW_WITH(Fabric({.accelerator = "nope", .strategy = "nope"}), std::invalid_argument,
                    "strategy");
}

TEST_F(ConnectorTest, StrategyObject) {
  auto strategy = std::make_shared<cppfabric::strategies::SingleDeviceStrategy>();
  Fabric fabric({.accelerator = "cpu", .strategy = strategy});
  EXPECT_EQ(fabric.strategy(), strategy);
  EXPECT_EQ(fabric.device(), c10::Device(c10::kCPU));
}

TEST_F(ConnectorTest, StrategyObjectConflicts) {
  using cppfabric::strategies::SingleDeviceStrategy;
  {
    auto s = std::make_shared<SingleDeviceStrategy>();
    s->set_accelerator(std::make_shared<acc::CPUAccelerator>());
    EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .strategy = s}), std::invalid_argument,
                      "accelerator set through both strategy class and accelerator flag");
  }
  {
    auto s = std::make_shared<SingleDeviceStrategy>();
    s->set_precision(std::make_shared<cppfabric::precision::Precision>());
    EXPECT_THROW_WITH(
        Fabric({.strategy = s,
                .plugins = {std::make_shared<cppfabric::precision::DoublePrecision>()}}),
        std::invalid_argument, "precision set through both strategy class and plugins");
  }
  {
    auto s = std::make_shared<SingleDeviceStrategy>();
    s->set_checkpoint_io(std::make_shared<MyIO>());
    EXPECT_THROW_WITH(Fabric({.strategy = s, .plugins = {std::make_shared<MyIO>()}}),
                      std::invalid_argument, "checkpoint_io set through both");
  }
  {
    auto s = std::make_shared<SingleDeviceStrategy>();
    s->set_cluster_environment(std::make_shared<MyEnvironment>());
    EXPECT_THROW_WITH(Fabric({.strategy = s, .plugins = {std::make_shared<MyEnvironment>()}}),
                      std::invalid_argument, "cluster_environment set through both");
  }
  {
    auto s = std::make_shared<SingleDeviceStrategy>();
    s->set_parallel_devices({c10::Device(c10::kCPU)});
    EXPECT_THROW_WITH(Fabric({.accelerator = "cuda", .strategy = s}), std::invalid_argument,
                      "CPU parallel_devices", "accelerator set to cuda");
  }
  {
    auto s = std::make_shared<SingleDeviceStrategy>();
    s->set_parallel_devices({c10::Device(c10::kCUDA, 0)});
    EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .strategy = s}), std::invalid_argument,
                      "GPU parallel_devices", "accelerator set to cpu");
  }
}

TEST_F(ConnectorTest, StrategyObjectCarriesItsPrecision) {
  auto s = std::make_shared<cppfabric::strategies::SingleDeviceStrategy>();
  auto p = std::make_shared<cppfabric::precision::DoublePrecision>();
  s->set_precision(p);
  Fabric fabric({.strategy = s});
  EXPECT_EQ(fabric.strategy()->precision(), p);
}

// ------------------------------------------------------------------ precision

TEST_F(ConnectorTest, InvalidPrecision) {
  EXPECT_THROW_WITH(Fabric({.precision = "17-true"}), std::invalid_argument,
                    "Precision '17-true' is invalid", "'16-mixed'", "'bf16-mixed'", "'32-true'",
                    "'64-true'", "64, 32, 16", "'bf16'");
  EXPECT_THROW_WITH(Fabric({.precision = 8}), std::invalid_argument, "Precision 8 is invalid");
}

TEST_F(ConnectorTest, PrecisionStrings) {
  EXPECT_EQ(Fabric({.accelerator = "cpu", .precision = "32-true"}).strategy()->precision()->name(),
            "32-true");
  EXPECT_EQ(Fabric({.accelerator = "cpu", .precision = "64-true"}).strategy()->precision()->name(),
            "64-true");
}

TEST_F(ConnectorTest, LegacyAliases) {
  {
    CaptureConsole console;
    EXPECT_EQ(Fabric({.accelerator = "cpu", .precision = 32}).strategy()->precision()->name(),
              "32-true");
    EXPECT_EQ(Fabric({.accelerator = "cpu", .precision = "64"}).strategy()->precision()->name(),
              "64-true");
    EXPECT_EQ(Fabric({.accelerator = "cpu", .precision = 64}).strategy()->precision()->name(),
              "64-true");
    EXPECT_EQ(console.text(), "") << "32 and 64 aliases do not warn";
  }
  {
    CaptureConsole console;
    EXPECT_EQ(Fabric({.accelerator = "cpu", .precision = "bf16"}).strategy()->precision()->name(),
              "bf16-mixed");
    EXPECT_NE(console.text().find("`precision=bf16` is supported for historical reasons"),
              std::string::npos)
        << console.text();
    EXPECT_NE(console.text().find("bf16-mixed instead"), std::string::npos);
  }
}

TEST_F(ConnectorTest, SixteenMixedOnCpuBecomesBf16Mixed) {
  CaptureConsole console;
  Fabric fabric({.accelerator = "cpu", .precision = 16});
  auto mixed = std::dynamic_pointer_cast<cppfabric::precision::MixedPrecision>(
      fabric.strategy()->precision());
  ASSERT_TRUE(mixed);
  EXPECT_EQ(mixed->name(), "bf16-mixed");
  EXPECT_EQ(mixed->device(), "cpu");
  EXPECT_FALSE(mixed->scaler()) << "bf16-mixed has no scaler";
  EXPECT_NE(console.text().find("`precision=16` is supported for historical reasons"),
            std::string::npos);
  EXPECT_NE(console.text().find("AMP with fp16 is not supported on CPU"), std::string::npos);
  EXPECT_NE(console.text().find("Using bfloat16 Automatic Mixed Precision (AMP)"),
            std::string::npos);
}

TEST_F(ConnectorTest, EveryPrecisionStringResolves) {
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"32-true", "32-true"},     {"64-true", "64-true"},       {"16-true", "16-true"},
      {"bf16-true", "bf16-true"}, {"bf16-mixed", "bf16-mixed"}, {"16-mixed", "bf16-mixed"}};
  for (const auto& [input, name] : expected) {
    Fabric fabric({.accelerator = "cpu", .precision = input});
    EXPECT_EQ(fabric.strategy()->precision()->name(), name) << input;
  }
  EXPECT_THROW_WITH(Fabric({.precision = "transformer-engine"}), cppfabric::NotYetAvailableError,
                    "Transformer Engine");
  EXPECT_THROW_WITH(Fabric({.precision = "transformer-engine-float16"}),
                    cppfabric::NotYetAvailableError, "Transformer Engine");
}

TEST_F(ConnectorTest, SixteenMixedOnCudaUsesAScaler) {
  if (!has_gpu()) GTEST_SKIP() << "needs a GPU";
  Fabric fabric({.accelerator = "cuda", .devices = 1, .precision = "16-mixed"});
  auto mixed = std::dynamic_pointer_cast<cppfabric::precision::MixedPrecision>(
      fabric.strategy()->precision());
  ASSERT_TRUE(mixed && mixed->scaler());
  EXPECT_TRUE(mixed->scaler()->is_enabled());
}

TEST_F(ConnectorTest, PrecisionObject) {
  auto p = std::make_shared<cppfabric::precision::DoublePrecision>();
  EXPECT_EQ(Fabric({.precision = p}).strategy()->precision(), p);
  EXPECT_EQ(Fabric({.plugins = {p}}).strategy()->precision(), p);
}

// ------------------------------------------------------------------ plugins

TEST_F(ConnectorTest, PluginTypes) {
  auto env = std::make_shared<MyEnvironment>();
  auto io = std::make_shared<MyIO>();
  Fabric fabric({.plugins = {env, io}});
  EXPECT_EQ(fabric.strategy()->cluster_environment(), env);
  EXPECT_EQ(fabric.strategy()->checkpoint_io(), io);
  EXPECT_THROW_WITH(Fabric({.plugins = {std::make_shared<NotAPlugin>()}}), cppfabric::TypeError,
                    "Found invalid type for plugin", "NotAPlugin",
                    "Precision, CheckpointIO, ClusterEnvironment");
  EXPECT_THROW_WITH(Fabric({.plugins = {nullptr}}), cppfabric::TypeError, "null plugin");
}

TEST_F(ConnectorTest, DuplicatePlugins) {
  auto p = [] { return std::make_shared<cppfabric::precision::Precision>(); };
  EXPECT_THROW_WITH(
      Fabric({.plugins = {p(), std::make_shared<MyIO>(), p(), std::make_shared<MyIO>()}}),
      std::invalid_argument, "Received multiple values for Precision, CheckpointIO flags");
}

TEST_F(ConnectorTest, PrecisionPluginAndString) {
  EXPECT_THROW_WITH(
      Fabric({.precision = "64-true",
              .plugins = {std::make_shared<cppfabric::precision::DoublePrecision>()}}),
      std::invalid_argument, "Received both `precision=64-true` and `plugins=", "DoublePrecision",
      "Choose one");
}

// ------------------------------------------------------------------ LT_* overrides

TEST_F(ConnectorTest, EnvironmentOverridesWin) {
  ScopedEnv precision("LT_PRECISION", "64-true");
  ScopedEnv accelerator("LT_ACCELERATOR", "cpu");
  Fabric fabric({.accelerator = "auto", .precision = "32-true"});
  EXPECT_EQ(fabric.strategy()->precision()->name(), "64-true");
  EXPECT_EQ(fabric.accelerator()->name(), "cpu");
}

TEST_F(ConnectorTest, EnvironmentDevicesAndNodes) {
  ScopedEnv devices("LT_DEVICES", "3");
  EXPECT_EQ(Fabric({.accelerator = "cpu"}).world_size(), 3);
  ScopedEnv nodes("LT_NUM_NODES", "x");
  EXPECT_THROW_WITH(Fabric({.accelerator = "cpu"}), std::invalid_argument, "LT_NUM_NODES='x'");
}

TEST_F(ConnectorTest, EnvironmentStrategyIsValidated) {
  ScopedEnv strategy("LT_STRATEGY", "bogus");
  EXPECT_THROW_WITH(Fabric(FabricOptions{}), std::invalid_argument, "`strategy='bogus'`");
}

TEST_F(ConnectorTest, CliConflict) {
  ScopedEnv cli("LT_CLI_USED", "1");
  ScopedEnv precision("LT_PRECISION", "64-true");
  // An explicit, different, non-default value in code conflicts with the CLI.
  EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .precision = "32-true"}), std::invalid_argument,
                    "Your code has `Fabric(precision='32-true', ...)`",
                    "conflicts with the value `--precision=64-true` set through the CLI");
  // The default value does not conflict.
  EXPECT_EQ(Fabric({.accelerator = "cpu"}).strategy()->precision()->name(), "64-true");
  // The same value does not conflict.
  EXPECT_EQ(Fabric({.accelerator = "cpu", .precision = "64-true"}).strategy()->precision()->name(),
            "64-true");
}

TEST_F(ConnectorTest, CliConflictDevices) {
  ScopedEnv cli("LT_CLI_USED", "1");
  ScopedEnv devices("LT_DEVICES", "1");
  EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .devices = 2}), std::invalid_argument,
                    "Fabric(devices=2, ...)", "`--devices=1`");
  ScopedEnv bad("LT_CLI_USED", "yes");
  EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .devices = 2}), std::invalid_argument,
                    "LT_CLI_USED='yes'");
}

TEST_F(ConnectorTest, CliMarksLaunchedAndForbidsLaunch) {
  ScopedEnv cli("LT_CLI_USED", "1");
  Fabric fabric({.accelerator = "cpu"});
  EXPECT_THROW_WITH(fabric.launch(), std::runtime_error, "launched through the CLI");
}
