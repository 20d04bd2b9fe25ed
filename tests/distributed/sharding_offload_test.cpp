// FSDP's cpu_offload on CUDA devices (programs/shard_program.cpp with --accelerator cuda): after
// several AdamW steps the parameters equal plain "fsdp" on the same devices (1e-5), with 1
// process on cuda:0 and, given 2 GPUs, 2 processes over NCCL (inner units, clip_gradients, FSDP
// mixed precision); the optimizer's parameters (pinned), their gradients and its state are in host
// memory; sharded and full checkpoints round-trip. Skipped without a GPU.
// FSDPCpuOffloadCore runs without one: the offload path of the flat-parameter core (separate
// device buffer, copies to and from the host shard) with the CPU as the compute device, in one
// process, against the same core without offload.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/accelerators/cuda.hpp"
#include "cppfabric/collectives/process_group.hpp"
#include "distributed/multiprocess.hpp"
#include "distributed/shard_runs.hpp"
#include "strategies/sharding.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::testing::ShardRun;

int gpus() { return cppfabric::accelerators::CUDAAccelerator::device_count(); }

ShardRun run_program(const std::string& flags) {
  return cppfabric::testing::run_shard_program("--accelerator cuda " + flags, 240, "offload");
}

// `flags` under "fsdp" and under "fsdp" with cpu_offload on `world` GPUs: the same parameters on
// every rank, and the offloaded run's optimizer sees host tensors.
void expect_offload_equals_fsdp(int world, const std::string& flags) {
  const std::string common = "--strategy fsdp --devices " + std::to_string(world) + " " + flags;
  const auto plain = run_program(common);
  ASSERT_EQ(plain.code, 0) << plain.output;
  const auto offload = run_program(common + " --offload --check-offload");
  ASSERT_EQ(offload.code, 0) << offload.output;
  cppfabric::testing::expect_same_params(plain, offload, world, "offload " + common);
  for (int rank = 0; rank < world; ++rank) {
    EXPECT_NE(offload.output.find("OFFLOAD rank=" + std::to_string(rank) +
                                  " params=cpu pinned=1 grads=cpu optim=cpu"),
              std::string::npos)
        << offload.output;
  }
}

double final_loss(const std::string& output) {
  const auto at = output.find("final loss ");
  return at == std::string::npos ? NAN : std::stod(output.substr(at + 11));
}

// Saves after 3 of 6 steps with cpu_offload on `world` GPUs and resumes (with cpu_offload, or
// under plain "fsdp"): the final loss and parameters equal an uninterrupted offloaded run's.
void expect_offload_resume(int world, const std::string& form, bool resume_offloaded) {
  const std::string common = "--strategy fsdp --inner --devices " + std::to_string(world) +
                             " --steps 6 --global-batch 12 --form " + form + " ";
  const auto whole = run_program(common + "--offload");
  ASSERT_EQ(whole.code, 0) << whole.output;
  const std::string ckpt = cppfabric::testing::temp_dir("offload_ckpt");
  const auto first = run_program(common + "--offload --save-dir " + ckpt + " --save-step 3");
  ASSERT_EQ(first.code, 0) << first.output;
  const auto resumed =
      run_program(common + (resume_offloaded ? "--offload " : "") + "--load-dir " + ckpt);
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  const std::string what = form + (resume_offloaded ? " resumed offloaded" : " resumed as fsdp");
  EXPECT_NE(resumed.output.find("resumed at step 3"), std::string::npos) << resumed.output;
  EXPECT_NEAR(final_loss(resumed.output), final_loss(whole.output), 1e-5) << what;
  cppfabric::testing::expect_same_params(whole, resumed, world, what);
}

TEST(FSDPCpuOffloadGpu, OneProcessEqualsFsdp) {
  if (gpus() < 1) GTEST_SKIP() << "needs a CUDA device";
  expect_offload_equals_fsdp(1, "--steps 5");
  expect_offload_equals_fsdp(1, "--steps 5 --inner --accumulate 2 --clip 0.05");
}

TEST(FSDPCpuOffloadGpu, TwoProcessesOverNcclEqualFsdp) {
  if (gpus() < 2) GTEST_SKIP() << "needs 2 CUDA devices";
  expect_offload_equals_fsdp(2, "--steps 5");
  expect_offload_equals_fsdp(2, "--steps 5 --inner --accumulate 2 --clip 0.05");
  expect_offload_equals_fsdp(2, "--steps 5 --inner --sharding SHARD_GRAD_OP");
  expect_offload_equals_fsdp(2, "--steps 5 --inner --sharding NO_SHARD");
}

TEST(FSDPCpuOffloadGpu, MixedPrecisionCastsOnTheDevice) {
  if (gpus() < 1) GTEST_SKIP() << "needs a CUDA device";
  const int world = gpus() >= 2 ? 2 : 1;
  expect_offload_equals_fsdp(world, "--steps 4 --inner --param-dtype bf16 --reduce-dtype f32");
  expect_offload_equals_fsdp(
      world, "--steps 4 --inner --param-dtype bf16 --bn --buffer-dtype bf16 --form full");
}

TEST(FSDPCpuOffloadGpu, ShardedCheckpointRoundTrips) {
  if (gpus() < 1) GTEST_SKIP() << "needs a CUDA device";
  const int world = gpus() >= 2 ? 2 : 1;
  expect_offload_resume(world, "sharded", /*resume_offloaded=*/true);
  expect_offload_resume(world, "sharded", /*resume_offloaded=*/false);
  expect_offload_resume(world, "full", /*resume_offloaded=*/true);
}

struct CoreRun {
  std::vector<at::Tensor> params;  // whole, after training
  int64_t full_between_steps = -1;
  int64_t peak_full = -1;
  bool params_on_host = true;
};

// Trains Linear(8, 15) -> tanh -> Linear(15, 4) (one unit) with AdamW for 3 steps through the
// core directly; `no_sync`: the first of 2 micro-batches under no_backward_sync; `twice`: 2
// backward passes per step without zero_grad between them (the shard gradient accumulates).
CoreRun train_core(const std::shared_ptr<cppfabric::collectives::ProcessGroup>& group, bool offload,
                   std::optional<c10::ScalarType> param_dtype, bool no_sync, bool twice) {
  namespace core = cppfabric::detail;
  torch::manual_seed(3);
  torch::nn::Sequential model(torch::nn::Linear(8, 15), torch::nn::Tanh(),
                              torch::nn::Linear(15, 4));
  core::UnitParams unit;
  for (const auto& p : model->named_parameters()) unit.emplace_back(p.key(), p.value());
  core::ShardingConfig config;
  config.reduce = core::GradReduce::AllReduce;  // as setup_module picks on Gloo
  config.overlap = true;
  config.param_dtype = param_dtype;
  config.strategy_name = "fsdp_cpu_offload";
  if (offload) config.compute_device = c10::Device(c10::kCPU);
  core::ShardedModule sharded({unit}, group, config);
  auto optimizer = torch::optim::AdamW(model->parameters(), torch::optim::AdamWOptions(1e-2));
  CoreRun out;
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    const int passes = no_sync || twice ? 2 : 1;
    for (int pass = 0; pass < passes; ++pass) {
      sharded.set_require_sync(!(no_sync && pass == 0));
      torch::manual_seed(100 + step * 10 + pass);
      auto x = torch::randn({5, 8}).to(param_dtype.value_or(torch::kFloat32));
      sharded.before_outer_forward();
      auto y = model->forward(x);
      sharded.after_outer_forward(true);
      y.to(torch::kFloat32).pow(2).mean().backward();
    }
    sharded.set_require_sync(true);
    optimizer.step();
    out.full_between_steps = std::max(out.full_between_steps, sharded.memory().full_bytes);
  }
  for (const auto& p : model->parameters()) {
    out.params_on_host = out.params_on_host && p.device().is_cpu() && p.storage().nbytes() > 0;
  }
  out.peak_full = sharded.memory().peak_full_bytes;
  auto guard = sharded.summon_full_params();
  for (const auto& p : model->parameters()) out.params.push_back(p.detach().clone());
  return out;
}

void expect_core_offload_matches(const std::shared_ptr<cppfabric::collectives::ProcessGroup>& group,
                                 std::optional<c10::ScalarType> dtype, bool no_sync, bool twice) {
  const auto plain = train_core(group, false, dtype, no_sync, twice);
  const auto offload = train_core(group, true, dtype, no_sync, twice);
  ASSERT_EQ(plain.params.size(), offload.params.size());
  for (std::size_t i = 0; i < plain.params.size(); ++i) {
    EXPECT_TRUE(torch::equal(plain.params[i], offload.params[i]))
        << "parameter " << i << " no_sync " << no_sync << " twice " << twice;
  }
  // Offload gathers into a separate buffer even with one process, freed between steps.
  EXPECT_EQ(offload.full_between_steps, 0);
  const int64_t element = dtype ? static_cast<int64_t>(c10::elementSize(*dtype)) : 4;
  EXPECT_EQ(offload.peak_full, (8 * 15 + 15 + 15 * 4 + 4) * element);
  EXPECT_TRUE(offload.params_on_host) << "between steps the parameters view the host shards";
}

// In a child process (the test binary must not start process groups before it forks).
template <typename Body>
void in_one_rank(Body body) {
  const auto codes = cppfabric::testing::run_ranks(1, [&](int, int port) {
    body(cppfabric::collectives::ProcessGroup::create({.main_port = port}));
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  EXPECT_EQ(codes, std::vector<int>{0});
}

TEST(FSDPCpuOffloadCore, EqualsTheCoreWithoutOffload) {
  in_one_rank([](const auto& group) {
    expect_core_offload_matches(group, std::nullopt, false, false);
    expect_core_offload_matches(group, std::nullopt, true, false);
    expect_core_offload_matches(group, std::nullopt, false, true);
  });
}

TEST(FSDPCpuOffloadCore, MixedPrecisionEqualsTheCoreWithoutOffload) {
  in_one_rank([](const auto& group) {
    expect_core_offload_matches(group, torch::kBFloat16, false, false);
    expect_core_offload_matches(group, torch::kFloat64, false, true);
  });
}

}  // namespace
