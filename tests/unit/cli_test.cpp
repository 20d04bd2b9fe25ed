// `cppfabric run`: option parsing, the process count and the environment given to each process.
#include "cli.hpp"

#include <gtest/gtest.h>

#include <cppfabric/cppfabric.hpp>

#include "test_utils.hpp"

namespace {

using cppfabric::cli::num_processes;
using cppfabric::cli::process_environment;
using cppfabric::cli::RunConfig;

std::optional<RunConfig> parse(std::vector<const char*> args) {
  args.insert(args.begin(), "cppfabric");
  return cppfabric::cli::parse_args(static_cast<int>(args.size()), args.data());
}

TEST(Cli, DefaultsFollowFabricRun) {
  auto config = parse({"run", "./train"});
  ASSERT_TRUE(config);
  EXPECT_FALSE(config->accelerator);
  EXPECT_FALSE(config->strategy);
  EXPECT_FALSE(config->precision);
  EXPECT_EQ(config->devices, "1");
  EXPECT_EQ(config->num_nodes, 1);
  EXPECT_EQ(config->node_rank, 0);
  EXPECT_EQ(config->main_address, "127.0.0.1");
  EXPECT_EQ(config->main_port, 29400);
  EXPECT_EQ(config->command, (std::vector<std::string>{"./train"}));
}

TEST(Cli, OptionsBothSpellingsAndProgramArgumentsPassThrough) {
  auto config =
      parse({"run", "--accelerator", "cpu", "--strategy=ddp", "--devices", "4", "--num_nodes", "2",
             "--node-rank=1", "--main-address", "10.0.0.1", "--main_port", "1234", "--precision",
             "bf16-mixed", "./train", "--devices", "7", "--lr=0.1"});
  ASSERT_TRUE(config);
  EXPECT_EQ(*config->accelerator, "cpu");
  EXPECT_EQ(*config->strategy, "ddp");
  EXPECT_EQ(config->devices, "4");
  EXPECT_EQ(config->num_nodes, 2);
  EXPECT_EQ(config->node_rank, 1);
  EXPECT_EQ(config->main_address, "10.0.0.1");
  EXPECT_EQ(config->main_port, 1234);
  EXPECT_EQ(*config->precision, "bf16-mixed");
  EXPECT_EQ(config->command, (std::vector<std::string>{"./train", "--devices", "7", "--lr=0.1"}));
}

TEST(Cli, HelpAndRepeatedOptions) {
  EXPECT_FALSE(parse({}));  // help
  EXPECT_FALSE(parse({"--help"}));
  EXPECT_FALSE(parse({"run", "--help", "./t"}));
  auto config = parse({"run", "--devices", "2", "--devices=3", "./t", "--help"});
  ASSERT_TRUE(config);  // the last value wins, as with click; --help after PROGRAM is PROGRAM's
  EXPECT_EQ(config->devices, "3");
  EXPECT_EQ(config->command, (std::vector<std::string>{"./t", "--help"}));
}

TEST(Cli, BadInputNamesTheValueAndTheChoices) {
  EXPECT_THROW_WITH(parse({"run", "--accelerator", "abc", "./t"}), std::invalid_argument,
                    "'--accelerator'", "'abc'", "'cpu'", "'cuda'", "'auto'");
  EXPECT_THROW_WITH(parse({"run", "--strategy", "dpp", "./t"}), std::invalid_argument, "'dpp'",
                    "'ddp'", "'single_device'");
  EXPECT_THROW_WITH(parse({"run", "--precision", "8", "./t"}), std::invalid_argument, "'8'",
                    "'16-mixed'", "'bf16'");
  EXPECT_THROW_WITH(parse({"run", "--num-nodes", "two", "./t"}), std::invalid_argument,
                    "'two' is not a valid integer");
  EXPECT_THROW_WITH(parse({"run", "--num-nodes", "2", "--node-rank", "2", "./t"}),
                    std::invalid_argument, "'--node-rank': 2", "0 .. num_nodes - 1 = 1");
  EXPECT_THROW_WITH(parse({"run", "--main-port", "70000", "./t"}), std::invalid_argument, "70000");
  EXPECT_THROW_WITH(parse({"run", "--frobnicate", "1", "./t"}), std::invalid_argument,
                    "'--frobnicate'", "--devices");
  EXPECT_THROW_WITH(parse({"run", "--devices", "2"}), std::invalid_argument, "PROGRAM");
  EXPECT_THROW_WITH(parse({"walk", "./t"}), std::invalid_argument, "'walk'", "'run'");
}

TEST(Cli, MaxRestarts) {
  EXPECT_EQ(parse({"run", "./t"})->max_restarts, 0);
  EXPECT_EQ(parse({"run", "--max-restarts", "3", "./t"})->max_restarts, 3);
  EXPECT_EQ(parse({"run", "--max_restarts=2", "./t"})->max_restarts, 2);
  EXPECT_THROW_WITH(parse({"run", "--max-restarts=-1", "./t"}), std::invalid_argument,
                    "'--max-restarts': -1", ">= 0");
  EXPECT_THROW_WITH(parse({"run", "--max-restarts", "many", "./t"}), std::invalid_argument,
                    "'many' is not a valid integer");
  auto config = *parse({"run", "--devices", "2", "--max-restarts", "3", "./t"});
  EXPECT_EQ(process_environment(config, 2, 0)["TORCHELASTIC_RESTART_COUNT"], "0");
  auto env = process_environment(config, 2, 1, /*restart_count=*/2);
  EXPECT_EQ(env["TORCHELASTIC_RESTART_COUNT"], "2");
  EXPECT_EQ(env["TORCHELASTIC_MAX_RESTARTS"], "3");
}

TEST(Cli, ProcessCount) {
  auto config = *parse({"run", "--accelerator", "cpu", "--devices", "3", "./t"});
  EXPECT_EQ(num_processes(config), 3);
  config.devices = "auto";
  EXPECT_EQ(num_processes(config), 1);
  config.devices = "0,1";
  EXPECT_THROW(num_processes(config), std::invalid_argument);  // indices select GPUs
  config.accelerator = "tpu";
  EXPECT_THROW_WITH(num_processes(config), std::invalid_argument, "tpu");
}

TEST(Cli, EnvironmentOfEachProcess) {
  auto config = *parse({"run", "--accelerator", "cpu", "--devices", "2", "--num-nodes", "3",
                        "--node-rank", "2", "--main-address", "node0", "--main-port", "5555",
                        "--precision", "64-true", "./t"});
  auto env = process_environment(config, 2, 1);
  EXPECT_EQ(env["LT_CLI_USED"], "1");
  EXPECT_EQ(env["LT_ACCELERATOR"], "cpu");
  EXPECT_EQ(env.count("LT_STRATEGY"), 0u);
  EXPECT_EQ(env["LT_DEVICES"], "2");
  EXPECT_EQ(env["LT_NUM_NODES"], "3");
  EXPECT_EQ(env["LT_PRECISION"], "64-true");
  EXPECT_EQ(env["RANK"], "5");
  EXPECT_EQ(env["LOCAL_RANK"], "1");
  EXPECT_EQ(env["GROUP_RANK"], "2");
  EXPECT_EQ(env["WORLD_SIZE"], "6");
  EXPECT_EQ(env["LOCAL_WORLD_SIZE"], "2");
  EXPECT_EQ(env["MASTER_ADDR"], "node0");
  EXPECT_EQ(env["MASTER_PORT"], "5555");
  EXPECT_FALSE(env["TORCHELASTIC_RUN_ID"].empty());

  // A Fabric in such a process sees the torchrun environment and the CLI's choices. (Without
  // LT_CLI_USED, which would make the constructor join the 6-process group.)
  std::vector<std::unique_ptr<cppfabric::testing::ScopedEnv>> scoped;
  for (const auto& [key, value] : env) {
    if (key != "LT_CLI_USED") {
      scoped.push_back(std::make_unique<cppfabric::testing::ScopedEnv>(key, value));
    }
  }
  cppfabric::Fabric fabric;
  EXPECT_EQ(fabric.strategy()->name(), "ddp");
  EXPECT_EQ(fabric.global_rank(), 5);
  EXPECT_EQ(fabric.world_size(), 6);
  EXPECT_EQ(fabric.node_rank(), 2);
  EXPECT_EQ(fabric.strategy()->precision()->name(), "64-true");
}

}  // namespace
