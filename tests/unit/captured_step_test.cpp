// cppfabric::CapturedStep: on CPU every call runs the step eagerly (the same results as calling the
// step directly), its errors name what is wrong; on a GPU (skipped without one) the recorded step
// gives the losses, parameters and step counts of eager steps, replays without a host sync, and
// skips an overflowing fp16 step on the device.
#include <gtest/gtest.h>
#include <torch/torch.h>
#ifdef CPPFABRIC_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <cppfabric/cppfabric.hpp>
#include <cppfabric/optim/fused.hpp>
#include <limits>

#include "../test_utils.hpp"

namespace {

using cppfabric::CapturedStep;
using cppfabric::Fabric;

torch::nn::Sequential small_net(uint64_t seed) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(32, 64), torch::nn::ReLU(),
                               torch::nn::Dropout(0.2), torch::nn::Linear(64, 10));
}

// The step the tests record: zero_grad, forward, `loss_fn`, fabric.backward, step; returns the loss
// (float32).
template <typename Net, typename LossFn>
CapturedStep::Function loss_step(Fabric& fabric, Net& net, cppfabric::FabricOptimizer& opt,
                                 LossFn loss_fn) {
  return [&fabric, &net, &opt, loss_fn](const std::vector<at::Tensor>& in) {
    opt.zero_grad();
    auto loss = loss_fn(net(in[0]), in[1]);
    fabric.backward(loss);
    opt.step();
    return std::vector<at::Tensor>{loss.detach().to(torch::kFloat32)};
  };
}
const auto cross_entropy = [](const at::Tensor& out, const at::Tensor& target) {
  return torch::nn::functional::cross_entropy(out, target);
};
const auto mse = [](const at::Tensor& out, const at::Tensor& target) {
  return torch::nn::functional::mse_loss(out, target);
};

struct Training {
  std::vector<double> losses;
  std::vector<at::Tensor> parameters;
  std::vector<at::Tensor> gradients;  // what p.grad() holds after the last step
  int64_t optimizer_steps = 0;        // `step` of the first parameter in the optimizer's state_dict
  int64_t replays = 0, eager = 0;
  bool captured = false;
};

// `steps` batches of 32 (batch `ragged_at` has 8 rows), AdamW with a cosine schedule stepped every
// 4 batches; through a CapturedStep when `captured`, by calling the step directly otherwise.
// With `cycle_betas`, beta1 changes with every scheduler step (as OneCycleLR's cycle_momentum).
Training train(const std::string& accelerator, const std::string& precision, bool captured,
               int steps = 12, int ragged_at = 7, bool cycle_betas = false) {
  Fabric fabric({.accelerator = accelerator, .devices = 1, .precision = precision});
  auto model = small_net(3);
  auto optimizer = std::make_shared<cppfabric::optim::AdamW>(
      model->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(1e-2));
  cppfabric::optim::CosineAnnealingLR scheduler(*optimizer, /*T_max=*/3);
  auto [net, opt] = fabric.setup(model, optimizer);
  auto body = loss_step(fabric, net, opt, cross_entropy);
  CapturedStep step(fabric, opt, body);
  torch::manual_seed(11);  // the data and the dropout masks: the same draws in both runs
  if (fabric.device().is_cuda()) torch::cuda::manual_seed_all(11);
  Training run;
  std::vector<at::Tensor> losses;
  for (int i = 0; i < steps; ++i) {
    const int64_t rows = i == ragged_at ? 8 : 32;
    const auto on = torch::TensorOptions().device(fabric.device());
    auto x = torch::randn({rows, 32}, on);
    auto y = torch::randint(0, 10, {rows}, on.dtype(torch::kLong));
    losses.push_back(captured ? step({x, y})[0] : body({x, y})[0]);
    if (i % 4 == 3) {
      scheduler.step();
      if (cycle_betas) {
        auto& options = static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[0].options());
        options.betas({0.85 + 0.02 * (i / 4), 0.999});
      }
    }
  }
  for (const auto& loss : losses) run.losses.push_back(loss.item<double>());
  for (const auto& p : model->parameters()) {
    run.parameters.push_back(p.detach().cpu().clone());
    run.gradients.push_back(p.grad().cpu().clone());
  }
  run.optimizer_steps = cppfabric::Value(opt.state_dict())
                            .at("state")
                            .at(cppfabric::Value(int64_t{0}))
                            .at("step")
                            .to_tensor()
                            .item<int64_t>();
  run.replays = step.replays();
  run.eager = step.eager_steps();
  run.captured = step.captured();
  return run;
}

void expect_same_training(const Training& eager, const Training& captured, double tolerance) {
  ASSERT_EQ(eager.losses.size(), captured.losses.size());
  for (std::size_t i = 0; i < eager.losses.size(); ++i) {
    EXPECT_NEAR(eager.losses[i], captured.losses[i], tolerance) << "loss of step " << i;
  }
  double worst = 0;
  for (std::size_t i = 0; i < eager.parameters.size(); ++i) {
    worst =
        std::max(worst, (eager.parameters[i] - captured.parameters[i]).abs().max().item<double>());
  }
  EXPECT_LE(worst, tolerance) << "largest parameter difference";
  // After a replay that followed an eager call (the ragged batch), p.grad() is the replay's.
  double worst_grad = 0;
  for (std::size_t i = 0; i < eager.gradients.size(); ++i) {
    worst_grad = std::max(worst_grad,
                          (eager.gradients[i] - captured.gradients[i]).abs().max().item<double>());
  }
  EXPECT_LE(worst_grad, tolerance) << "largest difference of the last step's gradients";
  EXPECT_EQ(eager.optimizer_steps, captured.optimizer_steps);
}

TEST(CapturedStep, OnCpuEveryCallIsTheEagerStep) {
  const Training eager = train("cpu", "32-true", false);
  const Training stepped = train("cpu", "32-true", true);
  expect_same_training(eager, stepped, 0.0);
  EXPECT_EQ(stepped.optimizer_steps, 12);
  EXPECT_FALSE(stepped.captured);
  EXPECT_EQ(stepped.replays, 0);
  EXPECT_EQ(stepped.eager, 12);

  Fabric fabric({.accelerator = "cpu", .devices = 1});
  auto model = small_net(1);
  auto [net, opt] = fabric.setup(model, std::make_shared<cppfabric::optim::SGD>(
                                            model->parameters(), torch::optim::SGDOptions(0.1)));
  CapturedStep step(fabric, opt, [](const std::vector<at::Tensor>& in) { return in; });
  EXPECT_NE(step.eager_reason().find("the device is cpu"), std::string::npos)
      << step.eager_reason();
}

TEST(CapturedStep, ErrorsNameWhatCannotBeRecorded) {
  Fabric fabric({.accelerator = "cpu", .devices = 1});
  auto model = small_net(1);
  auto identity = [](const std::vector<at::Tensor>& in) { return in; };
  auto [net, libtorch] =
      fabric.setup(model, std::make_shared<torch::optim::AdamW>(model->parameters()));
  EXPECT_THROW_WITH(CapturedStep(fabric, libtorch, identity), std::invalid_argument,
                    "cannot be recorded", "cppfabric::optim::AdamW");

  auto model2 = small_net(1);
  auto [net2, loop] =
      fabric.setup(model2, std::make_shared<cppfabric::optim::AdamW>(
                               model2->parameters(), torch::optim::AdamWOptions(),
                               cppfabric::optim::StepOptions{.fused = false, .foreach = true}));
  EXPECT_THROW_WITH(CapturedStep(fabric, loop, identity), std::invalid_argument, ".fused = false",
                    ".fused = true");

  auto model3 = small_net(1);
  auto [net3, fused] =
      fabric.setup(model3, std::make_shared<cppfabric::optim::AdamW>(model3->parameters()));
  EXPECT_THROW_WITH(CapturedStep(fabric, fused, identity, {.warmup_steps = 0}),
                    std::invalid_argument, "warmup_steps=0", "at least 1");
  EXPECT_THROW_WITH(CapturedStep(fabric, fused, CapturedStep::Function{}), std::invalid_argument,
                    "empty");
  EXPECT_THROW_WITH(CapturedStep(fabric, fused, identity, {.capture_error_mode = "local"}),
                    std::invalid_argument, "'local'", "'thread_local'");
  CapturedStep step(fabric, fused, identity);
  EXPECT_THROW_WITH(step({torch::ones({2}), at::Tensor()}), std::invalid_argument, "input 1 of 2",
                    "undefined");

  Fabric ddp({.accelerator = "cpu", .strategy = "ddp", .devices = 1});
  ddp.launch();
  auto model4 = small_net(1);
  auto [net4, synced] =
      ddp.setup(model4, std::make_shared<cppfabric::optim::AdamW>(model4->parameters()));
  EXPECT_THROW_WITH(CapturedStep(ddp, synced, identity), std::invalid_argument, "\"ddp\"",
                    "\"single_device\"");
}

// ---------------------------------------------------------------------------------------- GPU

bool has_gpu() { return torch::cuda::is_available(); }

TEST(CapturedStepGpu, SameLossesParametersAndStepCountsAsEager) {
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device";
  for (const char* precision : {"32-true", "16-mixed", "bf16-mixed"}) {
    SCOPED_TRACE(precision);
    const Training eager = train("cuda", precision, false);
    const Training stepped = train("cuda", precision, true);
    expect_same_training(eager, stepped, 1e-5);
    EXPECT_TRUE(stepped.captured);
    EXPECT_EQ(stepped.eager, 4) << "3 warm-up steps and the ragged batch";
    EXPECT_EQ(stepped.replays, 8);
    EXPECT_EQ(stepped.optimizer_steps, 12);
  }
}

// The kernels take betas by value: a change records the step again, so it still equals eager.
TEST(CapturedStepGpu, ChangedBetasAreRecordedAgain) {
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device";
  const Training eager = train("cuda", "32-true", false, 12, 7, /*cycle_betas=*/true);
  const Training stepped = train("cuda", "32-true", true, 12, 7, /*cycle_betas=*/true);
  expect_same_training(eager, stepped, 1e-5);
  EXPECT_TRUE(stepped.captured);
  EXPECT_EQ(stepped.replays, 8);
}

// Host inputs cannot be recorded: the first call says so.
TEST(CapturedStepGpu, HostInputsAreRefused) {
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device";
  Fabric fabric({.accelerator = "cuda", .devices = 1});
  auto model = small_net(5);
  auto [net, opt] =
      fabric.setup(model, std::make_shared<cppfabric::optim::AdamW>(model->parameters()));
  CapturedStep step(fabric, opt, loss_step(fabric, net, opt, cross_entropy));
  try {
    step({torch::randn({4, 32}), torch::randint(0, 10, {4}, torch::kLong)});
    ADD_FAILURE() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("input 0 is on cpu"), std::string::npos) << e.what();
  }
}

// Neither a replay nor an eager 16-mixed step with a fused optimizer syncs the host: the inf flag
// and the step counts stay on the device (until sync_steps(), or 64 eager steps).
TEST(CapturedStepGpu, ReplaysAndEagerFusedStepsNeverSyncTheHost) {
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device";
#ifdef CPPFABRIC_WITH_CUDA
  for (bool captured : {true, false}) {
    SCOPED_TRACE(captured ? "replays" : "eager steps");
    Fabric fabric({.accelerator = "cuda", .devices = 1, .precision = "16-mixed"});
    auto model = small_net(5);
    auto [net, opt] =
        fabric.setup(model, std::make_shared<cppfabric::optim::AdamW>(model->parameters()));
    auto body = loss_step(fabric, net, opt, cross_entropy);
    CapturedStep step(fabric, opt, body, {.enabled = captured});
    auto x = torch::randn({32, 32}, torch::kCUDA);
    auto y = torch::randint(0, 10, {32}, torch::TensorOptions(torch::kCUDA).dtype(torch::kLong));
    for (int i = 0; i < 4; ++i) step({x, y});  // warm-up and the recording
    ASSERT_EQ(step.captured(), captured);
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
    EXPECT_NO_THROW(for (int i = 0; i < 5; ++i) step({x, y}));
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    EXPECT_EQ(step.replays(), captured ? 6 : 0);
  }
#endif
}

TEST(CapturedStepGpu, AnOverflowingFp16StepIsSkippedOnTheDevice) {
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device";
  Fabric fabric({.accelerator = "cuda", .devices = 1, .precision = "16-mixed"});
  auto model = small_net(6);
  auto [net, opt] =
      fabric.setup(model, std::make_shared<cppfabric::optim::AdamW>(model->parameters()));
  CapturedStep step(fabric, opt, loss_step(fabric, net, opt, mse));
  const auto on = torch::TensorOptions(torch::kCUDA);
  auto x = torch::randn({16, 32}, on);
  auto y = torch::randn({16, 10}, on);
  for (int i = 0; i < 5; ++i) step({x, y});  // 3 warm-up, recording + replay, replay
  ASSERT_TRUE(step.captured());
  const auto before = model->parameters()[0].detach().clone();
  auto scaler_state = fabric.strategy()->precision()->state_dict();
  const double scale = scaler_state.at("scale").to_double();
  auto huge = x.clone();
  huge[0][0] = std::numeric_limits<float>::infinity();
  step({huge, y});
  EXPECT_TRUE(torch::equal(before, model->parameters()[0].detach())) << "the step was not skipped";
  EXPECT_DOUBLE_EQ(fabric.strategy()->precision()->state_dict().at("scale").to_double(),
                   scale * 0.5);
  const auto steps = cppfabric::Value(opt.state_dict())
                         .at("state")
                         .at(cppfabric::Value(int64_t{0}))
                         .at("step")
                         .to_tensor()
                         .item<int64_t>();
  EXPECT_EQ(steps, 5) << "the skipped step is not counted";
}

}  // namespace
