// FSDP activation checkpointing over real processes on loopback (programs/shard_program.cpp
// --ac-model: three residual MLP inner units with dropout, the first fed the data batch directly).
// After several AdamW steps every rank's parameters equal DDP's and those of the same FSDP run
// without checkpointing (1e-5), for FULL_SHARD, SHARD_GRAD_OP and NO_SHARD, with 2 and 3
// processes, gradient accumulation and bf16-mixed (the replay must draw the same dropout masks and
// run under the same autocast state). The bytes the graph keeps after forward drop by at least the
// selected units' intermediates (so a checkpoint that keeps them fails), only for the selected
// units; nested checkpointed units work; a unit whose forward returns a tuple is refused with a
// message naming it. In forked ranks (run_ranks): a retained graph adds the gradients again,
// torch::autograd::grad is refused, and a unit holding only nested units steps like an unsharded
// copy.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cmath>
#include <cppfabric/cppfabric.hpp>
#include <cppfabric/strategies/fsdp_unit.hpp>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "distributed/multiprocess.hpp"
#include "distributed/shard_runs.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::testing::read_params;
using cppfabric::testing::run_command;
using cppfabric::testing::run_ranks;
using cppfabric::testing::ScopedEnv;

using cppfabric::testing::expect_same_params;
using cppfabric::testing::worst_difference;
using Run = cppfabric::testing::ShardRun;

Run run_program(const std::string& flags, int limit_s = 240) {
  return cppfabric::testing::run_shard_program(flags, limit_s, "shard_ac");
}

const std::string kModel = "--ac-model --dropout 0.3 --steps 4 ";

// DDP, FSDP without checkpointing and FSDP checkpointing `policy`, same data and seeds.
void expect_checkpointing_changes_nothing(const std::string& sharding, int world,
                                          const std::string& flags = "",
                                          const std::string& policy = "all") {
  const std::string common = kModel + "--devices " + std::to_string(world) + " " + flags + " ";
  const auto ddp = run_program("--strategy ddp " + common);
  ASSERT_EQ(ddp.code, 0) << ddp.output;
  const std::string fsdp = "--strategy fsdp --sharding " + sharding + " " + common;
  const auto plain = run_program(fsdp);
  ASSERT_EQ(plain.code, 0) << plain.output;
  const auto checkpointed = run_program(fsdp + "--ac " + policy);
  ASSERT_EQ(checkpointed.code, 0) << checkpointed.output;
  const std::string what = sharding + " " + common + "--ac " + policy;
  expect_same_params(ddp, plain, world, what + " (FSDP without checkpointing vs DDP)");
  expect_same_params(ddp, checkpointed, world, what + " (vs DDP)");
  expect_same_params(plain, checkpointed, world, what + " (vs FSDP without checkpointing)");
  // Not a test that cannot fail: training moved the parameters, and dropout changes them.
  const auto no_dropout = run_program("--strategy ddp --ac-model --dropout 0 --steps 4 --devices " +
                                      std::to_string(world) + " " + flags);
  ASSERT_EQ(no_dropout.code, 0) << no_dropout.output;
  EXPECT_GT(worst_difference(read_params(ddp.dir + "/params_rank0.bin"),
                             read_params(no_dropout.dir + "/params_rank0.bin")),
            1e-4)
      << "dropout must matter in this model, or the RNG replay is not tested";
}

TEST(ShardingActivationCheckpointing, FullShardEqualsDdpAndTheRunWithout) {
  expect_checkpointing_changes_nothing("FULL_SHARD", 2);
}

TEST(ShardingActivationCheckpointing, ShardGradOpEqualsDdpAndTheRunWithout) {
  expect_checkpointing_changes_nothing("SHARD_GRAD_OP", 2);
}

TEST(ShardingActivationCheckpointing, NoShardAndThreeProcesses) {
  expect_checkpointing_changes_nothing("NO_SHARD", 2, "", "types");
  expect_checkpointing_changes_nothing("FULL_SHARD", 3, "", "block0,block2");
}

TEST(ShardingActivationCheckpointing, GradientAccumulationAndBf16Mixed) {
  expect_checkpointing_changes_nothing("FULL_SHARD", 2, "--accumulate 3");
  expect_checkpointing_changes_nothing("FULL_SHARD", 2, "--precision bf16-mixed");
  expect_checkpointing_changes_nothing("SHARD_GRAD_OP", 2, "--precision bf16-mixed");
}

// Each unit's fc2 an inner unit of its own: a checkpointed unit's replay runs a nested checkpoint
// (or a nested ordinary unit), whose backward is reentrant once more.
TEST(ShardingActivationCheckpointing, NestedUnits) {
  expect_checkpointing_changes_nothing("FULL_SHARD", 2, "--ac-nested");
  expect_checkpointing_changes_nothing("FULL_SHARD", 2, "--ac-nested", "block0.fc2,block1");
  expect_checkpointing_changes_nothing("SHARD_GRAD_OP", 2, "--ac-nested", "block1.fc2,block2");
}

// Under FSDP's mixed_precision (bf16 gathers) the replay computes in bf16 as the first forward did
// and its gradients still reach the reduce hooks of the new gradient accumulators.
TEST(ShardingActivationCheckpointing, FsdpMixedPrecision) {
  for (const char* sharding : {"FULL_SHARD", "SHARD_GRAD_OP"}) {
    const std::string fsdp = std::string("--strategy fsdp --sharding ") + sharding + " " + kModel +
                             "--devices 2 --param-dtype bf16 ";
    const auto plain = run_program(fsdp);
    ASSERT_EQ(plain.code, 0) << plain.output;
    const auto checkpointed = run_program(fsdp + "--ac all");
    ASSERT_EQ(checkpointed.code, 0) << checkpointed.output;
    expect_same_params(plain, checkpointed, 2, fsdp + "--ac all (vs without checkpointing)");
  }
}

// "ACT rank=R bytes=N" of `output`, or -1.
long long act_bytes(const std::string& output, int rank) {
  const std::string tag = "ACT rank=" + std::to_string(rank) + " bytes=";
  const auto at = output.find(tag);
  if (at == std::string::npos) return -1;
  return std::stoll(output.substr(at + tag.size()));
}

// Batch 32, hidden 1024: without checkpointing each unit keeps GELU's input and fc2's input,
// 2 x 32 x 1024 floats (256 KiB), plus the dropout mask; with it, only its 32 x 8 input.
TEST(ShardingActivationCheckpointing, DropsTheSelectedUnitsActivations) {
  const int64_t batch = 32, hidden = 1024;
  const long long per_unit = 2 * batch * hidden * 4;
  // SHARD_GRAD_OP keeps every unit gathered from forward to backward: 17 * hidden + 8 floats each.
  const long long unit_params = (17 * hidden + 8) * 4;
  for (const std::string sharding : {"FULL_SHARD", "SHARD_GRAD_OP"}) {
    const std::string common = "--strategy fsdp --sharding " + sharding +
                               " --devices 2 --ac-model --dropout 0.1 --steps 1 --act-memory "
                               "--batch 32 --hidden 1024 ";
    const auto plain = run_program(common);
    ASSERT_EQ(plain.code, 0) << plain.output;
    const auto all = run_program(common + "--ac all");
    ASSERT_EQ(all.code, 0) << all.output;
    const auto one = run_program(common + "--ac block1");
    ASSERT_EQ(one.code, 0) << one.output;
    for (int rank = 0; rank < 2; ++rank) {
      const long long kept_plain = act_bytes(plain.output, rank);
      const long long kept_all = act_bytes(all.output, rank);
      const long long kept_one = act_bytes(one.output, rank);
      ASSERT_GE(kept_plain, 0) << plain.output;
      ASSERT_GE(kept_all, 0) << all.output;
      ASSERT_GE(kept_one, 0) << one.output;
      std::printf(
          "%s rank %d: kept after forward %lld bytes without checkpointing, %lld with all 3 units "
          "checkpointed, %lld with block1 only (one unit's GELU + fc2 inputs: %lld)\n",
          sharding.c_str(), rank, kept_plain, kept_all, kept_one, per_unit);
      EXPECT_GE(kept_plain, 3 * per_unit) << "the model must keep big activations at all";
      EXPECT_GE(kept_plain - kept_all, 3 * per_unit) << sharding;
      const long long gathered = sharding == "SHARD_GRAD_OP" ? 3 * unit_params : 0;
      EXPECT_LT(kept_all, gathered + per_unit / 4) << sharding;
      // Only the selected unit's activations go.
      EXPECT_GE(kept_plain - kept_one, per_unit) << sharding;
      EXPECT_LT(kept_plain - kept_one, 2 * per_unit) << sharding;
    }
  }
}

TEST(ShardingActivationCheckpointing, UnitNotReturningOneTensorIsRefused) {
  const auto bad = run_program("--strategy fsdp --devices 2 --ac-bad --ac all --steps 1");
  EXPECT_NE(bad.code, 0) << bad.output;
  EXPECT_NE(bad.output.find("FSDP activation checkpointing of unit 'pair'"), std::string::npos)
      << bad.output;
  EXPECT_NE(bad.output.find("must return one at::Tensor"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("std::tuple"), std::string::npos) << bad.output;
  // The same model trains when that unit is not selected.
  const auto ok = run_program("--strategy fsdp --devices 2 --ac-bad --ac block0 --steps 1");
  EXPECT_EQ(ok.code, 0) << ok.output;
}

// A policy that selects no inner unit is most likely a typo: warned about, training goes on.
TEST(ShardingActivationCheckpointing, PolicySelectingNoUnitWarns) {
  const auto r = run_program("--strategy fsdp --devices 2 --ac-model --ac blocks.1 --steps 1");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("activation_checkpointing_policy selected none of the inner units "
                          "('block0', 'block1', 'block2')"),
            std::string::npos)
      << r.output;
}

// ------------------------------------------------------------------ autograd semantics, in-process

struct TinyBlockImpl : torch::nn::Module {
  TinyBlockImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 8));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl() {
    b0 = register_module("b0", cppfabric::strategies::FSDPUnit<TinyBlockImpl>());
    b1 = register_module("b1", cppfabric::strategies::FSDPUnit<TinyBlockImpl>());
    head = register_module("head", torch::nn::Linear(8, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(b1(b0(x))); }
  cppfabric::strategies::FSDPUnit<TinyBlockImpl> b0{nullptr}, b1{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(TinyNet);

// Both ranks set up TinyNet with the Fabric `make_fabric` returns, then run `body`.
template <typename Body>
void with_tiny_net(const std::function<cppfabric::Fabric()>& make_fabric, Body body) {
  auto codes = run_ranks(2, [&](int rank, int port) {
    ScopedEnv local("LOCAL_RANK", std::to_string(rank));
    ScopedEnv size("WORLD_SIZE", "2");
    ScopedEnv master("MASTER_PORT", std::to_string(port));
    cppfabric::Fabric fabric = make_fabric();
    fabric.launch();
    torch::manual_seed(0);
    TinyNet model;
    auto net = fabric.setup_module(model);
    body(fabric, model, net);
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

// FSDP with every unit checkpointed (unless `checkpoint` is false).
std::function<cppfabric::Fabric()> tiny_fsdp(const std::string& sharding, bool checkpoint = true,
                                             const std::string& precision = "32-true") {
  return [=] {
    using namespace cppfabric::strategies;
    FSDPOptions options{.sharding_strategy = sharding};
    if (checkpoint) options.activation_checkpointing_policy = checkpoint_all_units();
    return cppfabric::Fabric({.accelerator = "cpu",
                              .strategy = std::make_shared<FSDPStrategy>(options),
                              .devices = 2,
                              .precision = precision});
  };
}

template <typename Body>
void with_tiny_fsdp(const std::string& sharding, Body body) {
  with_tiny_net(tiny_fsdp(sharding), [&](cppfabric::Fabric&, TinyNet& model, auto& net) {
    EXPECT_TRUE(model->b0->fsdp_checkpoints_activations());
    EXPECT_TRUE(model->b1->fsdp_checkpoints_activations());
    body(model, net);
  });
}

// A second backward through a retained graph adds the same gradients again to every parameter
// (the outer unit's too: the module's output gathers it again), under each sharding, with and
// without checkpointing (which replays the units), under bf16-mixed, and for ZeRO and DDP. The
// gradients compared are the ones the optimizer holds (this rank's shards).
void expect_retained_graph_doubles(const std::function<cppfabric::Fabric()>& make_fabric,
                                   const std::string& what, double rtol = 1e-5) {
  SCOPED_TRACE(what);
  with_tiny_net(make_fabric, [&](cppfabric::Fabric& fabric, TinyNet&, auto& net) {
    auto optimizer = fabric.setup_optimizers(
        std::make_shared<torch::optim::SGD>(net.parameters(), torch::optim::SGDOptions(0.1)));
    auto grads = [&] {
      std::vector<at::Tensor> out;
      for (auto& group : optimizer->param_groups()) {
        for (const auto& p : group.params()) {
          out.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
        }
      }
      return out;
    };
    const auto x = torch::randn({4, 8});
    auto loss = net(x).pow(2).mean();
    fabric.backward(loss, {}, /*retain_graph=*/true);
    const std::vector<at::Tensor> once = grads();
    fabric.backward(loss);
    const std::vector<at::Tensor> twice = grads();
    ASSERT_EQ(once.size(), twice.size());
    int64_t compared = 0;
    for (std::size_t i = 0; i < once.size(); ++i) {
      if (!once[i].defined() || once[i].numel() == 0) continue;  // an empty shard piece
      compared += once[i].numel();
      EXPECT_GT(once[i].abs().max().item<double>(), 0) << "parameter " << i;
      EXPECT_TRUE(torch::allclose(twice[i], 2 * once[i], rtol, 1e-6))
          << "parameter " << i << ": " << (twice[i] - 2 * once[i]).abs().max().item<double>();
    }
    // TinyNet has 569 parameters (280 per block, 9 in the head): a rank's shards hold about half.
    EXPECT_GE(compared, 280);
  });
}

TEST(ShardingActivationCheckpointing, RetainedGraphAddsTheGradientsAgain) {
  for (const std::string sharding : {"FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"}) {
    for (bool checkpoint : {true, false}) {
      expect_retained_graph_doubles(tiny_fsdp(sharding, checkpoint),
                                    sharding + (checkpoint ? " checkpointed" : ""));
    }
  }
  expect_retained_graph_doubles(tiny_fsdp("FULL_SHARD", false, "bf16-mixed"),
                                "FULL_SHARD bf16-mixed", 1e-2);
  for (const std::string strategy : {"deepspeed_stage_1", "deepspeed_stage_2", "ddp"}) {
    expect_retained_graph_doubles(
        [strategy] {
          return cppfabric::Fabric({.accelerator = "cpu", .strategy = strategy, .devices = 2});
        },
        strategy);
  }
}

// A retained graph that reaches the outer unit's parameters without passing through a tensor
// output of the set-up module cannot gather them again: under NO_SHARD (where autograd accepts
// the shard, which has the parameters' shapes) the second backward fails with a message naming
// the parameter instead of adding the gradient twice.
TEST(ShardingActivationCheckpointing, RetainedGraphPastTheOutputIsRefused) {
  with_tiny_net(tiny_fsdp("NO_SHARD", false), [](cppfabric::Fabric&, TinyNet&, auto& net) {
    // A forward whose result is not a tensor: FabricModule passes it on as it is.
    struct Result {
      at::Tensor y;
    };
    auto result = net.call([](TinyNetImpl& m, const at::Tensor& x) { return Result{m.forward(x)}; },
                           torch::randn({4, 8}));
    auto loss = result.y.pow(2).mean();
    loss.backward({}, /*retain_graph=*/true);
    try {
      loss.backward();
      ADD_FAILURE() << "the second backward must throw";
    } catch (const std::exception& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("while its unit was resharded"), std::string::npos) << message;
      EXPECT_NE(message.find("parameter 'head."), std::string::npos) << message;
    }
  });
}

// A graph can outlive the strategy that recorded it: backward after teardown is a clear error.
TEST(ShardingActivationCheckpointing, BackwardAfterTeardownIsAClearError) {
  with_tiny_net(tiny_fsdp("FULL_SHARD", false), [](cppfabric::Fabric& fabric, TinyNet&, auto& net) {
    auto loss = net(torch::randn({4, 8})).sum();
    fabric.strategy()->teardown();
    try {
      loss.backward();
      ADD_FAILURE() << "backward after teardown must throw";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("was torn down"), std::string::npos) << e.what();
    }
  });
}

// torch::autograd::grad through a checkpointed unit is refused with a message naming the unit,
// as torch's reentrant checkpoint refuses it (the replay accumulates into .grad).
TEST(ShardingActivationCheckpointing, AutogradGradIsRefused) {
  with_tiny_fsdp("FULL_SHARD", [](TinyNet&, auto& net) {
    const auto x = torch::randn({4, 8}).requires_grad_();
    auto loss = net(x).sum();
    try {
      torch::autograd::grad({loss}, {x});
      ADD_FAILURE() << "grad() through checkpointed units must throw";
    } catch (const std::exception& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("FSDP activation checkpointing of unit 'b"), std::string::npos)
          << message;
      EXPECT_NE(message.find("torch::autograd::grad()"), std::string::npos) << message;
    }
  });
}

// A unit whose parameters all belong to nested units (a block wrapping two inner units, the
// usual level to checkpoint at) has no flat buffer of its own. Without and with checkpointing,
// one SGD step equals the same step on an unsharded copy (both ranks see the same batch, so the
// averaged gradient is the local one).
struct WrapperImpl : torch::nn::Module {
  WrapperImpl() {
    first = register_module("first", cppfabric::strategies::FSDPUnit<TinyBlockImpl>());
    second = register_module("second", cppfabric::strategies::FSDPUnit<TinyBlockImpl>());
  }
  torch::Tensor forward(const torch::Tensor& x) { return second(first(x)); }
  cppfabric::strategies::FSDPUnit<TinyBlockImpl> first{nullptr}, second{nullptr};
};

struct WrappedNetImpl : torch::nn::Module {
  WrappedNetImpl() {
    block = register_module("block", cppfabric::strategies::FSDPUnit<WrapperImpl>());
    head = register_module("head", torch::nn::Linear(8, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(block(x)); }
  cppfabric::strategies::FSDPUnit<WrapperImpl> block{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(WrappedNet);

TEST(ShardingActivationCheckpointing, UnitWithOnlyNestedUnits) {
  for (const std::string policy : {"none", "block", "all"}) {
    auto codes = run_ranks(2, [&](int rank, int port) {
      ScopedEnv local("LOCAL_RANK", std::to_string(rank));
      ScopedEnv size("WORLD_SIZE", "2");
      ScopedEnv master("MASTER_PORT", std::to_string(port));
      using namespace cppfabric::strategies;
      FSDPOptions options;
      if (policy == "all") options.activation_checkpointing_policy = checkpoint_all_units();
      if (policy == "block") {
        options.activation_checkpointing_policy = checkpoint_module_types<WrapperImpl>();
      }
      cppfabric::Fabric fabric({.accelerator = "cpu",
                                .strategy = std::make_shared<FSDPStrategy>(options),
                                .devices = 2});
      fabric.launch();
      torch::manual_seed(0);
      WrappedNet model;
      WrappedNet reference;
      {
        torch::NoGradGuard no_grad;
        const auto from = model->parameters();
        const auto to = reference->parameters();
        for (std::size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
      }
      const auto x = torch::randn({4, 8});
      auto optimizer =
          std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1));
      auto [net, opt] = fabric.setup(model, optimizer);
      EXPECT_EQ(model->block->fsdp_checkpoints_activations(), policy != "none");
      fabric.backward(net(x).pow(2).mean());
      opt.step();
      reference(x).pow(2).mean().backward();
      auto* sharding = dynamic_cast<ShardingStrategy*>(fabric.strategy().get());
      auto full = sharding->summon_full_params(*net.module());
      const auto actual = model->parameters();
      const auto expected = reference->parameters();
      for (std::size_t i = 0; i < actual.size(); ++i) {
        const auto want = (expected[i] - 0.1 * expected[i].grad()).detach();
        EXPECT_TRUE(torch::allclose(actual[i].detach(), want, 1e-5, 1e-6))
            << policy << " parameter " << i;
        EXPECT_FALSE(torch::equal(actual[i].detach(), expected[i].detach()))
            << "the step must change parameter " << i;
      }
      return ::testing::Test::HasFailure() ? 1 : 0;
    });
    EXPECT_EQ(codes, (std::vector<int>{0, 0})) << policy;
  }
}

}  // namespace
