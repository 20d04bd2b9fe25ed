// FSDP HYBRID_SHARD over real processes on loopback (programs/shard_program.cpp): parameters
// sharded within a shard group and replicated across the groups. After several AdamW steps every
// rank's parameters equal DDP's on the same data (1e-5) on one node with a device_mesh and on two
// "nodes" (two launches with NODE_RANK 0 and 1 on this machine); sharded and full checkpoints
// written under HYBRID_SHARD resume under FULL_SHARD at another world size and the other way round.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cppfabric/strategies/fsdp.hpp"
#include "distributed/multiprocess.hpp"
#include "distributed/shard_runs.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::strategies::FSDPOptions;
using cppfabric::strategies::FSDPStrategy;
using cppfabric::testing::read_params;
using cppfabric::testing::run_command;

const std::string kProgram = CPPFABRIC_SHARD_PROGRAM;

using cppfabric::testing::exit_code;
using cppfabric::testing::expect_same_params;
using cppfabric::testing::worst_difference;
using Result = cppfabric::testing::ShardRun;

// One launch of the program (it starts its own processes).
Result run_program(const std::string& flags, int limit_s = 240) {
  return cppfabric::testing::run_shard_program(flags, limit_s, "hybrid");
}

// Two launches of `devices` processes each, as two nodes of one job (NODE_RANK 0 and 1, the same
// MASTER_ADDR/MASTER_PORT), writing into one folder. The code is the first non-zero one.
Result run_two_nodes(const std::string& flags, int limit_s = 240) {
  Result r;
  r.dir = cppfabric::testing::temp_dir("hybrid_nodes");
  const std::string env =
      "MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(cppfabric::testing::find_free_port()) +
      " ";
  auto launch = [&](int node) {
    return env + "NODE_RANK=" + std::to_string(node) + " timeout -s KILL " +
           std::to_string(limit_s) + " " + kProgram + " --num-nodes 2 " + flags + " --out " +
           r.dir + " > " + r.dir + "/node" + std::to_string(node) + ".log 2>&1";
  };
  const std::string script = launch(1) + " & other=$!; " + launch(0) +
                             "; a=$?; wait $other; b=$?; cat " + r.dir + "/node0.log " + r.dir +
                             "/node1.log; if [ $a -ne 0 ]; then exit $a; fi; exit $b";
  int status = 0;
  r.output = run_command("sh -c '" + script + "'", &status);
  r.code = exit_code(status);
  return r;
}

// DDP on 4 processes of one launch against FSDP with each of `hybrid` (common flags: `flags`).
void expect_equal_to_ddp(const std::vector<std::string>& hybrid, const std::string& flags) {
  const auto ddp = run_program("--strategy ddp --devices 4 " + flags);
  ASSERT_EQ(ddp.code, 0) << ddp.output;
  for (const auto& h : hybrid) {
    const auto run = run_program("--strategy fsdp --devices 4 " + h + " " + flags);
    ASSERT_EQ(run.code, 0) << run.output;
    expect_same_params(ddp, run, 4, h + " " + flags);
  }
}

// ------------------------------------------------------------ options (no processes)

TEST(FSDPHybridOptions, AcceptsBothHybridStrategiesAndValidatesDeviceMesh) {
  EXPECT_NO_THROW(FSDPStrategy(FSDPOptions{.sharding_strategy = "HYBRID_SHARD"}));
  EXPECT_NO_THROW(
      FSDPStrategy(FSDPOptions{.sharding_strategy = "_HYBRID_SHARD_ZERO2", .device_mesh = {2, 3}}));
  EXPECT_THROW_WITH(
      FSDPStrategy(FSDPOptions{.sharding_strategy = "FULL_SHARD", .device_mesh = {2, 2}}),
      std::invalid_argument, "device_mesh {2, 2}", "'FULL_SHARD'", "HYBRID_SHARD");
  EXPECT_THROW_WITH(
      FSDPStrategy(FSDPOptions{.sharding_strategy = "HYBRID_SHARD", .device_mesh = {4}}),
      std::invalid_argument, "device_mesh {4}", "replication size, sharding size");
  EXPECT_THROW_WITH(
      FSDPStrategy(FSDPOptions{.sharding_strategy = "HYBRID_SHARD", .device_mesh = {0, 4}}),
      std::invalid_argument, "device_mesh {0, 4}");
  EXPECT_THROW_WITH(FSDPStrategy(FSDPOptions{.sharding_strategy = "HYBRID"}), std::invalid_argument,
                    "'HYBRID'", "'HYBRID_SHARD'", "'_HYBRID_SHARD_ZERO2'");
}

// ------------------------------------------------------------ training equals DDP

// One node, device_mesh {2, 2}: shard groups {0, 1}, {2, 3}; replicas {0, 2}, {1, 3}.
TEST(FSDPHybrid, DeviceMeshOnOneNodeEqualsDdp) {
  // {4, 1}: shard groups of one, plain replication; {1, 4}: one group, FULL_SHARD.
  expect_equal_to_ddp({"--sharding HYBRID_SHARD --mesh 2,2", "--sharding HYBRID_SHARD --mesh 4,1",
                       "--sharding HYBRID_SHARD --mesh 1,4"},
                      "");
  expect_equal_to_ddp(
      {"--sharding HYBRID_SHARD --mesh 2,2", "--sharding _HYBRID_SHARD_ZERO2 --mesh 2,2"},
      "--inner --accumulate 2");
}

// The norm clip_gradients computes is summed over one shard group (the replicas hold the same
// shards); the GradScaler's inf check is agreed by every rank.
TEST(FSDPHybrid, ClipGradientsAndGradScalerEqualDdp) {
  const auto ddp = run_program("--strategy ddp --devices 4 --clip 0.05 --inner");
  ASSERT_EQ(ddp.code, 0) << ddp.output;
  const auto run = run_program(
      "--strategy fsdp --devices 4 --sharding HYBRID_SHARD --mesh 2,2 --clip 0.05 --inner");
  ASSERT_EQ(run.code, 0) << run.output;
  expect_same_params(ddp, run, 4, "clip");
  // The printed norms agree too (rank 0's line per step).
  auto norms = [](const std::string& out) {
    std::vector<double> values;
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
      const auto at = line.find("grad norm ");
      if (at != std::string::npos) values.push_back(std::stod(line.substr(at + 10)));
    }
    return values;
  };
  const auto expected = norms(ddp.output), actual = norms(run.output);
  ASSERT_EQ(expected.size(), 4u) << ddp.output;
  ASSERT_EQ(actual.size(), expected.size()) << run.output;
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-5);

  expect_equal_to_ddp({"--sharding HYBRID_SHARD --mesh 2,2"}, "--scaler --inf-step 2");
}

// Two launches of two processes with --num-nodes 2: by default each node is a shard group.
TEST(FSDPHybrid, TwoNodesShardWithinANodeAndEqualDdp) {
  const auto ddp = run_program("--strategy ddp --devices 4 --inner");
  ASSERT_EQ(ddp.code, 0) << ddp.output;
  const auto run = run_two_nodes("--strategy fsdp --sharding HYBRID_SHARD --devices 2 --inner");
  ASSERT_EQ(run.code, 0) << run.output;
  expect_same_params(ddp, run, 4, "two nodes");
  for (const char* line :
       {"GROUPS rank=0 shard=0,1 replicate=0,2", "GROUPS rank=1 shard=0,1 replicate=1,3",
        "GROUPS rank=2 shard=2,3 replicate=0,2", "GROUPS rank=3 shard=2,3 replicate=1,3"}) {
    EXPECT_NE(run.output.find(line), std::string::npos) << line << "\n" << run.output;
  }
}

TEST(FSDPHybrid, DeviceMeshMustMatchTheWorldSize) {
  const auto run =
      run_program("--strategy fsdp --devices 4 --sharding HYBRID_SHARD --mesh 3,2 --steps 1", 120);
  EXPECT_NE(run.code, 0) << run.output;
  EXPECT_NE(run.output.find("device_mesh {3, 2}"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("the world size is 4"), std::string::npos) << run.output;
}

// ------------------------------------------------------------ checkpoints across topologies

double final_loss(const std::string& output) {
  const auto at = output.find("final loss ");
  if (at == std::string::npos) return NAN;
  return std::stod(output.substr(at + 11));
}

// Saves after 3 of 6 steps with `save` flags, resumes with `resume` flags: the final loss and
// parameters equal an uninterrupted run with `save` flags (1e-5). 12 rows per step over all ranks.
void expect_resume_matches(const std::string& save, const std::string& resume,
                           const std::string& form) {
  const std::string common = " --steps 6 --global-batch 12 --inner --form " + form + " ";
  const auto whole = run_program(save + common);
  ASSERT_EQ(whole.code, 0) << whole.output;
  const std::string ckpt = cppfabric::testing::temp_dir("hybrid_ckpt");
  const auto first = run_program(save + common + "--save-dir " + ckpt + " --save-step 3");
  ASSERT_EQ(first.code, 0) << first.output;
  const auto resumed = run_program(resume + common + "--load-dir " + ckpt);
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed at step 3"), std::string::npos) << resumed.output;
  const double expected = final_loss(whole.output);
  const double actual = final_loss(resumed.output);
  ASSERT_FALSE(std::isnan(expected) || std::isnan(actual)) << whole.output << resumed.output;
  EXPECT_NEAR(actual, expected, 1e-5) << save << " -> " << resume << " (" << form << ")";
  const auto p_whole = read_params(whole.dir + "/params_rank0.bin");
  const auto p_resumed = read_params(resumed.dir + "/params_rank0.bin");
  ASSERT_EQ(p_whole.size(), p_resumed.size());
  EXPECT_LE(worst_difference(p_whole, p_resumed), 1e-5)
      << save << " -> " << resume << " (" << form << ")";
}

const std::string kHybrid4 = "--strategy fsdp --devices 4 --sharding HYBRID_SHARD --mesh 2,2";

TEST(FSDPHybridCheckpoint, ShardedHybridResumesUnderFullShardAndBack) {
  expect_resume_matches(kHybrid4, "--strategy fsdp --devices 3", "sharded");
  expect_resume_matches("--strategy fsdp --devices 2", kHybrid4, "sharded");
}

TEST(FSDPHybridCheckpoint, FullHybridResumesUnderFullShardAndBack) {
  expect_resume_matches(kHybrid4, "--strategy fsdp --devices 2", "full");
  expect_resume_matches("--strategy fsdp --devices 3", kHybrid4, "full");
}

// The directory the first replica wrote is a valid DCP checkpoint that Python reads, equal tensor
// for tensor to the full form of the same run (each piece once: save refuses overlapping pieces).
TEST(FSDPHybridCheckpoint, PythonReadsTheHybridShardedDirectory) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "no bootstrapped Python environment";
  const std::string sharded = cppfabric::testing::temp_dir("hybrid_dcp");
  const std::string full = cppfabric::testing::temp_dir("hybrid_full");
  const std::string common = kHybrid4 + " --inner --steps 3 --save-step 3 ";
  const auto a = run_program(common + "--form sharded --save-dir " + sharded);
  ASSERT_EQ(a.code, 0) << a.output;
  const auto b = run_program(common + "--form full --save-dir " + full);
  ASSERT_EQ(b.code, 0) << b.output;
  cppfabric::testing::expect_python_consolidates_to_full(*python, sharded + "/ckpt", full + "/ckpt",
                                                         24);
}

}  // namespace
