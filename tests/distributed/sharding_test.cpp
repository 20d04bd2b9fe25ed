// FSDP and ZeRO over real processes on loopback (programs/shard_program.cpp): after several AdamW
// steps every rank's parameters equal DDP's on the same data (1e-5), for each sharding mode, with
// 2 and 3 processes, a parameter count not divisible by the world size (439, prime), bf16-mixed,
// gradient accumulation, clip_gradients and inner units; and the per-rank memory of a 52M-parameter
// model against DDP's.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "distributed/multiprocess.hpp"
#include "distributed/shard_runs.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::testing::read_params;
using cppfabric::testing::run_command;

using Result = cppfabric::testing::ShardRun;

Result run_program(const std::string& flags, int limit_s = 240) {
  return cppfabric::testing::run_shard_program(flags, limit_s, "shard");
}

// Runs `flags` under DDP and under `strategy`; every rank's parameters agree within 1e-5.
void expect_equal_to_ddp(const std::string& strategy, int world, const std::string& flags = "") {
  const std::string common = "--devices " + std::to_string(world) + " " + flags;
  const auto ddp = run_program("--strategy ddp " + common);
  ASSERT_EQ(ddp.code, 0) << ddp.output;
  const auto sharded = run_program("--strategy " + strategy + " " + common);
  ASSERT_EQ(sharded.code, 0) << sharded.output;
  cppfabric::testing::expect_same_params(ddp, sharded, world, strategy + " " + common);
}

const std::vector<std::string> kStrategies = {
    "fsdp --sharding FULL_SHARD", "fsdp --sharding SHARD_GRAD_OP", "fsdp --sharding NO_SHARD",
    "deepspeed_stage_1", "deepspeed_stage_2"};

TEST(Sharding, EveryModeEqualsDdpWithTwoProcesses) {
  for (const auto& s : kStrategies) expect_equal_to_ddp(s, 2);
}

TEST(Sharding, EveryModeEqualsDdpWithThreeProcesses) {
  for (const auto& s : kStrategies) expect_equal_to_ddp(s, 3);
}

TEST(Sharding, InnerUnitsEqualDdp) {
  for (const auto& s : kStrategies) expect_equal_to_ddp(s, 2, "--inner");
  expect_equal_to_ddp("fsdp --sharding FULL_SHARD", 3, "--inner");
}

TEST(Sharding, GradientAccumulationEqualsDdp) {
  for (const auto& s : kStrategies) expect_equal_to_ddp(s, 2, "--accumulate 3 --inner");
}

TEST(Sharding, ClipGradientsUsesTheNormOverAllShards) {
  for (const auto& s : kStrategies) expect_equal_to_ddp(s, 2, "--clip 0.05");
  expect_equal_to_ddp("fsdp", 3, "--clip 0.05 --inner");
}

TEST(Sharding, Bf16MixedEqualsDdp) {
  for (const auto& s : kStrategies) expect_equal_to_ddp(s, 2, "--precision bf16-mixed");
}

// "16-mixed" with a GradScaler: an inf in a gradient element that only one rank's shard holds
// makes every rank skip the step and back off the scale together, as DDP (which sees it
// everywhere) does.
TEST(Sharding, GradScalerInfCheckIsAgreedAcrossRanks) {
  for (const auto& s : kStrategies) {
    expect_equal_to_ddp(s, 2, "--scaler --inf-step 2");
  }
  expect_equal_to_ddp("fsdp", 3, "--scaler --inf-step 1 --inner");
}

TEST(Sharding, ZeroBucketsOverlapAndEqualDdp) {
  expect_equal_to_ddp("deepspeed_stage_2 --bucket 100", 2, "--inner");
  expect_equal_to_ddp("deepspeed_stage_1 --bucket 100", 3);
}

// A backward that throws midway, after some units' (buckets') gradient collectives were launched
// (overlapped, still in flight): the next steps wait for them, drop the interrupted pass and equal
// DDP's run with the same interruption. Buckets of 100 elements: ZeRO has one in flight too.
TEST(Sharding, ABackwardThatThrowsMidwayIsDiscarded) {
  for (const auto& s : kStrategies) expect_equal_to_ddp(s, 2, "--inner --throw-step 1");
  expect_equal_to_ddp("deepspeed_stage_2 --bucket 100", 2, "--throw-step 2");
  expect_equal_to_ddp("fsdp", 3, "--inner --throw-step 2");
  // The previous step's gradients, stashed while a unit is gathered, must not survive the
  // zero_grad that follows the failed backward.
  for (const char* s : {"fsdp --sharding FULL_SHARD", "fsdp --sharding SHARD_GRAD_OP"}) {
    expect_equal_to_ddp(s, 2, "--inner --throw-step 1 --throw-no-zero");
  }
}

double final_loss(const std::string& output) {
  const auto at = output.find("final loss ");
  if (at == std::string::npos) return NAN;
  return std::stod(output.substr(at + 11));
}

// Saves after 3 of 6 steps with 2 ranks, resumes with `resume_world` ranks: the final loss and
// parameters equal an uninterrupted 2-rank run's (1e-5). 12 rows per step split over the ranks.
void expect_resume_matches(const std::string& strategy, const std::string& form, int resume_world) {
  const std::string common = "--steps 6 --global-batch 12 --form " + form + " ";
  const auto whole = run_program("--strategy " + strategy + " --devices 2 " + common);
  ASSERT_EQ(whole.code, 0) << whole.output;
  const std::string ckpt = cppfabric::testing::temp_dir("shard_ckpt");
  const auto first = run_program("--strategy " + strategy + " --devices 2 " + common +
                                 "--save-dir " + ckpt + " --save-step 3");
  ASSERT_EQ(first.code, 0) << first.output;
  const auto resumed =
      run_program("--strategy " + strategy + " --devices " + std::to_string(resume_world) + " " +
                  common + "--load-dir " + ckpt);
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed at step 3"), std::string::npos) << resumed.output;
  const double expected = final_loss(whole.output);
  const double actual = final_loss(resumed.output);
  ASSERT_FALSE(std::isnan(expected) || std::isnan(actual)) << whole.output << resumed.output;
  EXPECT_NEAR(actual, expected, 1e-5) << strategy << " " << form << " 2 -> " << resume_world;
  const auto p_whole = read_params(whole.dir + "/params_rank0.bin");
  const auto p_resumed = read_params(resumed.dir + "/params_rank0.bin");
  ASSERT_EQ(p_whole.size(), p_resumed.size());
  double worst = 0;
  for (std::size_t i = 0; i < p_whole.size(); ++i) {
    worst = std::max(worst, std::abs(p_whole[i] - p_resumed[i]));
  }
  EXPECT_LE(worst, 1e-5) << strategy << " " << form << " 2 -> " << resume_world;
}

TEST(ShardingCheckpoint, ShardedSavedByTwoRanksResumesOnOneAndThree) {
  expect_resume_matches("fsdp", "sharded", 1);
  expect_resume_matches("fsdp", "sharded", 3);
  expect_resume_matches("fsdp --inner", "sharded", 3);
}

TEST(ShardingCheckpoint, FullSavedByTwoRanksResumesOnOneAndThree) {
  expect_resume_matches("fsdp", "full", 1);
  expect_resume_matches("fsdp", "full", 3);
}

TEST(ShardingCheckpoint, ZeroResumesAtAnotherWorldSize) {
  expect_resume_matches("deepspeed_stage_2", "sharded", 3);
  expect_resume_matches("deepspeed_stage_1", "sharded", 1);
}

// Python's torch.distributed.checkpoint reads the sharded directory 3 ranks wrote (with inner
// units: pieces that cut rows), and what it consolidates equals the "full" form of the same
// training, tensor for tensor.
TEST(ShardingCheckpoint, PythonReadsTheShardedDirectory) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "no bootstrapped Python environment";
  const std::string sharded = cppfabric::testing::temp_dir("shard_dcp");
  const std::string full = cppfabric::testing::temp_dir("shard_full");
  const std::string common = "--strategy fsdp --devices 3 --inner --steps 3 --save-step 3 ";
  ASSERT_EQ(run_program(common + "--form sharded --save-dir " + sharded).code, 0);
  ASSERT_EQ(run_program(common + "--form full --save-dir " + full).code, 0);
  cppfabric::testing::expect_python_consolidates_to_full(*python, sharded + "/ckpt", full + "/ckpt",
                                                         24);
}

std::map<std::string, long long> parse_mem(const std::string& output, int rank) {
  std::map<std::string, long long> out;
  std::istringstream lines(output);
  std::string line;
  const std::string tag = "MEM rank=" + std::to_string(rank) + " ";
  while (std::getline(lines, line)) {
    const auto at = line.find(tag);
    if (at == std::string::npos) continue;
    std::istringstream fields(line.substr(at + tag.size()));
    std::string field;
    while (fields >> field) {
      const auto eq = field.find('=');
      out[field.substr(0, eq)] = std::stoll(field.substr(eq + 1));
    }
  }
  return out;
}

TEST(Sharding, MemoryPerRankAgainstDdp) {
  const std::string common = "--devices 2 --memory --steps 2 --batch 2";
  const auto ddp = run_program("--strategy ddp " + common, 600);
  ASSERT_EQ(ddp.code, 0) << ddp.output;
  const auto fsdp = run_program("--strategy fsdp " + common, 600);
  ASSERT_EQ(fsdp.code, 0) << fsdp.output;
  const auto zero = run_program("--strategy deepspeed_stage_2 " + common, 600);
  ASSERT_EQ(zero.code, 0) << zero.output;
  for (int rank = 0; rank < 2; ++rank) {
    auto d = parse_mem(ddp.output, rank);
    auto f = parse_mem(fsdp.output, rank);
    auto z = parse_mem(zero.output, rank);
    ASSERT_FALSE(d.empty() || f.empty() || z.empty()) << ddp.output << fsdp.output << zero.output;
    const double ddp_all = d["params"] + d["grads"] + d["optim"];
    const double fsdp_all = f["params"] + f["grads"] + f["optim"];
    const double ratio = fsdp_all / ddp_all;
    const double zero_ratio = (z["grads"] + z["optim"]) / double(d["grads"] + d["optim"]);
    std::printf(
        "rank %d: DDP %.1f MB, FSDP %.1f MB (%.3f of DDP); ZeRO-2 grads+optim %.3f of "
        "DDP's; FSDP peak gathered %.1f MB, one full copy %.1f MB, largest unit %.1f MB\n",
        rank, ddp_all / 1e6, fsdp_all / 1e6, ratio, zero_ratio, f["peak_full"] / 1e6,
        f["total_params"] / 1e6, f["largest_unit"] / 1e6);
    EXPECT_GE(d["params"], 50'000'000LL * 4) << "the model must have at least 50M parameters";
    EXPECT_LE(ratio, 0.5 + 0.1);
    EXPECT_LE(zero_ratio, 0.5 + 0.1);
    // With 8 inner units, at most the outer unit and one inner unit are gathered at a time.
    EXPECT_LT(f["peak_full"], f["total_params"]);
    EXPECT_LE(f["peak_full"], 2 * f["largest_unit"]);
  }
}

// FSDP's mixed_precision against a DDP run whose layers compute with their weights and input cast
// the same way and whose averaged gradients are rounded to the reduce dtype (shard_program's
// reference): module-level casting, not autocast.
TEST(ShardingMixedPrecision, Bf16ParamsEqualCastingDdp) {
  const std::string mp = " --param-dtype bf16 --reduce-dtype f32";
  for (const char* s : {"FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"}) {
    expect_equal_to_ddp(std::string("fsdp --sharding ") + s, 2, mp);
  }
  expect_equal_to_ddp("fsdp --sharding FULL_SHARD", 3, "--inner" + mp);
  expect_equal_to_ddp("fsdp --sharding FULL_SHARD", 2, "--inner --accumulate 3" + mp);
  // HYBRID_SHARD: the shard group's sum, then the replicas' (4 processes, 2 x 2).
  expect_equal_to_ddp("fsdp --sharding HYBRID_SHARD --mesh 2,2", 4, "--inner" + mp);
}

TEST(ShardingMixedPrecision, Bf16ReductionEqualsRoundedDdp) {
  expect_equal_to_ddp("fsdp --sharding FULL_SHARD", 2,
                      "--inner --param-dtype bf16 --reduce-dtype bf16");
  // reduce_dtype unset: the reduction runs in param_dtype (Python's rule).
  expect_equal_to_ddp("fsdp --sharding NO_SHARD", 2, "--param-dtype bf16");
}

TEST(ShardingMixedPrecision, GatheredInParamDtypeWhileShardsStayFloat) {
  const auto mixed = run_program("--strategy fsdp --devices 2 --inner --param-dtype bf16");
  ASSERT_EQ(mixed.code, 0) << mixed.output;
  EXPECT_NE(mixed.output.find("DTYPES forward BFloat16 shard Float grad Float"), std::string::npos)
      << mixed.output;
  const auto plain = run_program("--strategy fsdp --devices 2 --inner");
  ASSERT_EQ(plain.code, 0) << plain.output;
  EXPECT_NE(plain.output.find("DTYPES forward Float shard Float grad Float"), std::string::npos)
      << plain.output;
  // The casts change the result: bf16 compute is not float32 compute.
  const auto a = read_params(mixed.dir + "/params_rank0.bin");
  const auto b = read_params(plain.dir + "/params_rank0.bin");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_GT(cppfabric::testing::worst_difference(a, b), 1e-4);
}

TEST(ShardingMixedPrecision, BuffersAreCastButCheckpointedInTheirOwnDtype) {
  const auto r = run_program(
      "--strategy fsdp --devices 2 --bn --param-dtype bf16 --buffer-dtype bf16 --form full");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("BUFFERS setup BFloat16"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("BUFFERS saved Float loaded BFloat16 equal 1"), std::string::npos)
      << r.output;
}

TEST(ShardingMixedPrecision, PeakGatheredStaysAtOneUnit) {
  // bf16 gathers change the parameters' dtype, which gives them new gradient accumulators every
  // gather: each unit must still be reduced and freed as soon as its backward is done.
  const auto r = run_program(
      "--strategy fsdp --devices 2 --memory --steps 2 --batch 2 "
      "--param-dtype bf16",
      600);
  ASSERT_EQ(r.code, 0) << r.output;
  for (int rank = 0; rank < 2; ++rank) {
    auto f = parse_mem(r.output, rank);
    ASSERT_FALSE(f.empty()) << r.output;
    // largest_unit is a bf16 full buffer: half of the float32 parameters' bytes per unit.
    EXPECT_LT(f["largest_unit"] * 4, f["total_params"]) << r.output;
    EXPECT_GT(f["peak_full"], 0);
    EXPECT_LE(f["peak_full"], 2 * f["largest_unit"]) << r.output;
  }
}

}  // namespace
