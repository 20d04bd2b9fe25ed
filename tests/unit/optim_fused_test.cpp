// cppfabric::optim::AdamW / Adam / SGD (fused kernels): the same parameters as LibTorch's
// optimizers over many steps, the GradScaler path (scale and inf flag as tensors), Python's
// checkpoint layout and a resume, Fabric setup with a scheduler, and clear errors.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cppfabric/cppfabric.hpp>
#include <cppfabric/optim/fused.hpp>
#include <cstdio>
#include <limits>
#include <tuple>

namespace {

namespace o = torch::optim;
using cppfabric::Value;

torch::nn::Sequential make_model(uint64_t seed) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(6, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 3));
}

double max_difference(torch::nn::Module& a, torch::nn::Module& b) {
  auto pa = a.parameters(), pb = b.parameters();
  double worst = 0;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    worst = std::max(worst, (pa[i] - pb[i]).abs().max().item<double>());
  }
  return worst;
}

// Two param groups (different lr and weight decay where the options have it).
template <typename Options>
std::vector<o::OptimizerParamGroup> two_groups(torch::nn::Sequential& model, Options options) {
  auto params = model->parameters();
  std::vector<at::Tensor> first(params.begin(), params.begin() + 2);
  std::vector<at::Tensor> rest(params.begin() + 2, params.end());
  auto second = std::make_unique<Options>(options);
  second->lr(options.lr() * 0.5);
  return {o::OptimizerParamGroup(first),
          o::OptimizerParamGroup(rest, std::unique_ptr<o::OptimizerOptions>(std::move(second)))};
}

// Trains a LibTorch optimizer and ours side by side on the same data from the same weights.
// Every step mode but LibTorch's own loop: fused kernels and foreach (multi-tensor) operations.
const cppfabric::optim::StepOptions kModes[] = {{.fused = true}, {.fused = false, .foreach = true}};

template <typename Ref, typename Ours, typename Options>
void expect_same_training(Options options, int steps, const char* what) {
  for (const auto mode : kModes) {
    SCOPED_TRACE(std::string(what) + (mode.fused ? " (fused)" : " (foreach)"));
    auto ref_model = make_model(3), our_model = make_model(3);
    Ref ref(two_groups(ref_model, options), options);
    Ours ours(two_groups(our_model, options), options, mode);
    double worst = 0;
    for (int step = 0; step < steps; ++step) {
      torch::manual_seed(100 + step);
      auto x = torch::randn({8, 6});
      auto y = torch::randn({8, 3});
      for (auto [model, opt] : {std::pair<torch::nn::Sequential*, o::Optimizer*>{&ref_model, &ref},
                                {&our_model, &ours}}) {
        opt->zero_grad();
        torch::mse_loss((*model)->forward(x), y).backward();
        opt->step();
      }
      worst = std::max(worst, max_difference(*ref_model, *our_model));
    }
    EXPECT_LE(worst, 1e-6);
    // Training moved the weights (a test that cannot fail otherwise).
    EXPECT_GT(max_difference(*ref_model, *make_model(3)), 1e-3);
    // The same state, in LibTorch's types (checkpoints and schedulers read them).
    EXPECT_EQ(ref.state().size(), ours.state().size());
  }
}

TEST(FusedOptimizers, AdamWEqualsLibTorchOverManySteps) {
  expect_same_training<o::AdamW, cppfabric::optim::AdamW>(o::AdamWOptions(1e-2).weight_decay(0.05),
                                                          300, "adamw");
  expect_same_training<o::AdamW, cppfabric::optim::AdamW>(
      o::AdamWOptions(3e-3).betas({0.8, 0.99}).eps(1e-6).amsgrad(true), 300, "adamw amsgrad");
}

TEST(FusedOptimizers, AdamEqualsLibTorchOverManySteps) {
  expect_same_training<o::Adam, cppfabric::optim::Adam>(o::AdamOptions(1e-2), 300, "adam");
  expect_same_training<o::Adam, cppfabric::optim::Adam>(
      o::AdamOptions(5e-3).weight_decay(0.01).amsgrad(true), 300, "adam l2 amsgrad");
}

TEST(FusedOptimizers, SgdEqualsLibTorchOverManySteps) {
  expect_same_training<o::SGD, cppfabric::optim::SGD>(o::SGDOptions(0.05), 300, "plain");
  expect_same_training<o::SGD, cppfabric::optim::SGD>(o::SGDOptions(0.05).momentum(0.9), 300,
                                                      "momentum");
  expect_same_training<o::SGD, cppfabric::optim::SGD>(
      o::SGDOptions(0.02).momentum(0.9).nesterov(true).weight_decay(1e-3), 300, "nesterov");
  expect_same_training<o::SGD, cppfabric::optim::SGD>(
      o::SGDOptions(0.05).momentum(0.5).dampening(0.3).weight_decay(1e-2), 300, "dampening");
}

TEST(FusedOptimizers, UnfusedFallsBackToLibTorchsLoop) {
  auto a = make_model(5), b = make_model(5);
  o::AdamW ref(a->parameters(), o::AdamWOptions(1e-2));
  cppfabric::optim::AdamW ours(b->parameters(), o::AdamWOptions(1e-2), {.fused = false});
  for (int step = 0; step < 5; ++step) {
    auto x = torch::randn({4, 6});
    for (auto [model, opt] :
         {std::pair<torch::nn::Sequential*, o::Optimizer*>{&a, &ref}, {&b, &ours}}) {
      opt->zero_grad();
      (*model)->forward(x).sum().backward();
      opt->step();
    }
  }
  EXPECT_EQ(max_difference(*a, *b), 0.0);  // the very same code
}

// GradScaler's path: gradients of a loss scaled by S, the scale and the inf flag as tensors.
template <typename Ours, typename Options>
void expect_scaled_step(Options options, const char* what) {
  for (const auto mode : kModes) {
    SCOPED_TRACE(std::string(what) + (mode.fused ? " (fused)" : " (foreach)"));
    auto plain = make_model(9), scaled = make_model(9);
    Ours a(plain->parameters(), options, mode), b(scaled->parameters(), options, mode);
    const auto scale = torch::full({}, 1024.0f);
    const auto clear = torch::zeros({}, torch::kFloat);
    const auto set = torch::ones({}, torch::kFloat);
    for (int step = 0; step < 20; ++step) {
      torch::manual_seed(step);
      auto x = torch::randn({8, 6});
      a.zero_grad();
      b.zero_grad();
      plain->forward(x).pow(2).mean().backward();
      (scaled->forward(x).pow(2).mean() * scale).backward();
      if (step % 5 == 4) {
        // An overflowing step: nothing moves, the step count stays.
        std::vector<at::Tensor> before;
        for (const auto& p : scaled->parameters()) before.push_back(p.detach().clone());
        b.step_scaled(scale, set);
        auto after = scaled->parameters();
        for (std::size_t i = 0; i < after.size(); ++i)
          EXPECT_TRUE(torch::equal(before[i], after[i]));
        continue;
      }
      a.step();
      b.step_scaled(scale, clear);
    }
    EXPECT_LE(max_difference(*plain, *scaled), 1e-5);
    EXPECT_GT(max_difference(*plain, *make_model(9)), 1e-3);
  }
}

TEST(FusedOptimizers, ScaledStepUnscalesAndSkipsOnInf) {
  expect_scaled_step<cppfabric::optim::AdamW>(o::AdamWOptions(1e-2).weight_decay(0.1), "adamw");
  expect_scaled_step<cppfabric::optim::Adam>(o::AdamOptions(1e-2), "adam");
  expect_scaled_step<cppfabric::optim::SGD>(o::SGDOptions(0.05).momentum(0.9), "sgd");
}

TEST(FusedOptimizers, SkippedStepsDoNotAdvanceTheStepCount) {
  auto model = make_model(1);
  cppfabric::optim::AdamW opt(model->parameters(), o::AdamWOptions(1e-2));
  for (int step = 0; step < 4; ++step) {
    opt.zero_grad();
    model->forward(torch::randn({2, 6})).sum().backward();
    opt.step_scaled(torch::ones({}), step == 1 ? torch::ones({}) : torch::zeros({}));
  }
  opt.sync_steps();
  for (const auto& p : model->parameters()) {
    auto& s = static_cast<o::AdamWParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
    EXPECT_EQ(s.step(), 3);
  }
}

// Saving reads the step counts from the device tensors the kernels count in, unless a count was
// loaded since: a checkpoint saved right after a load keeps the loaded counts.
TEST(FusedOptimizers, SavedStepCountsAreTheLatestStepsOrTheLoadedOnes) {
  auto model = make_model(4);
  auto opt = std::make_shared<cppfabric::optim::AdamW>(model->parameters());
  auto step_of = [](const cppfabric::Value& sd) {
    return sd.at("state").at(Value(0)).at("step").to_tensor().item<int64_t>();
  };
  auto saved = [&] { return cppfabric::State{{"o", opt}}.to_value().at("o"); };
  for (int i = 0; i < 3; ++i) {
    opt->zero_grad();
    model->forward(torch::randn({2, 6})).sum().backward();
    opt->step();
  }
  const Value three = saved();
  EXPECT_EQ(step_of(three), 3);
  auto other = make_model(4);
  auto loaded = std::make_shared<cppfabric::optim::AdamW>(other->parameters());
  for (int i = 0; i < 5; ++i) {
    loaded->zero_grad();
    other->forward(torch::randn({2, 6})).sum().backward();
    loaded->step();
  }
  cppfabric::State{{"o", loaded}}.at("o").stateful()->load_state_dict(three);
  EXPECT_EQ(step_of(cppfabric::State{{"o", loaded}}.to_value().at("o")), 3);
  loaded->zero_grad();
  other->forward(torch::randn({2, 6})).sum().backward();
  loaded->step();
  EXPECT_EQ(step_of(cppfabric::State{{"o", loaded}}.to_value().at("o")), 4);
}

TEST(FusedOptimizers, CheckpointsInPythonsLayoutAndResumeExactly) {
  cppfabric::Fabric fabric({.accelerator = "cpu", .devices = 1});
  auto model = make_model(2);
  auto opt = std::make_shared<cppfabric::optim::AdamW>(model->parameters(),
                                                       o::AdamWOptions(1e-2).amsgrad(true));
  cppfabric::optim::CosineAnnealingLR scheduler(*opt, /*T_max=*/10);
  auto [net, fopt] = fabric.setup(model, opt);
  auto train = [&](torch::nn::Sequential& m, o::Optimizer& optimizer, int steps, int first) {
    for (int step = first; step < first + steps; ++step) {
      torch::manual_seed(step);
      optimizer.zero_grad();
      m->forward(torch::randn({4, 6})).pow(2).sum().backward();
      optimizer.step();
    }
  };
  train(model, *opt, 3, 0);
  scheduler.step();
  const Value v = cppfabric::State{{"o", fopt}}.to_value().at("o");
  const Value& entry = v.at("state").at(Value(0));
  EXPECT_EQ(entry.at("step").to_tensor().item<float>(), 3.0f);
  EXPECT_NE(entry.find("exp_avg"), nullptr);
  EXPECT_NE(entry.find("exp_avg_sq"), nullptr);
  EXPECT_NE(entry.find("max_exp_avg_sq"), nullptr);
  const Value& group = v.at("param_groups").elements()[0];
  EXPECT_TRUE(group.at("amsgrad").to_bool());
  EXPECT_NEAR(group.at("lr").to_double(), opt->param_groups()[0].options().get_lr(), 1e-15);

  // Load into a fresh fused optimizer, continue both: identical.
  auto model2 = make_model(77);
  {
    auto src = model->parameters(), dst = model2->parameters();
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  auto opt2 = std::make_shared<cppfabric::optim::AdamW>(model2->parameters(),
                                                        o::AdamWOptions(1.0).amsgrad(true));
  const std::string path = "/tmp/cppfabric_fused_" + std::to_string(::getpid()) + ".ckpt";
  fabric.save(path, {{"optimizer", fopt}});
  fabric.load(path, {{"optimizer", opt2}});
  std::remove(path.c_str());
  EXPECT_EQ(opt2->param_groups()[0].options().get_lr(), opt->param_groups()[0].options().get_lr());
  train(model, *opt, 4, 3);
  train(model2, *opt2, 4, 3);
  EXPECT_EQ(max_difference(*model, *model2), 0.0);
}

TEST(FusedOptimizers, FabricSetupAndSchedulerTakeThem) {
  cppfabric::Fabric fabric({.accelerator = "cpu", .devices = 1});
  auto model = make_model(4);
  auto opt = std::make_shared<cppfabric::optim::SGD>(model->parameters(),
                                                     o::SGDOptions(0.1).momentum(0.9));
  cppfabric::optim::StepLR scheduler(*opt, /*step_size=*/1, /*gamma=*/0.5);
  auto [net, fopt] = fabric.setup(model, opt);
  auto before = model->parameters()[0].detach().clone();
  fopt.zero_grad();
  fabric.backward(net(torch::randn({2, 6})).sum());
  fopt.step();
  scheduler.step();
  EXPECT_FALSE(torch::equal(before, model->parameters()[0]));
  EXPECT_DOUBLE_EQ(opt->param_groups()[0].options().get_lr(), 0.05);
}

// Dense parameters in other layouts than contiguous (a channels_last convolution weight, a
// transposed matrix) step as LibTorch's optimizer steps their contiguous copies, also when a
// gradient set by hand or state loaded from a checkpoint is contiguous.
TEST(FusedOptimizers, ChannelsLastAndTransposedParametersEqualLibTorch) {
  auto make = [] {
    torch::manual_seed(5);
    return std::vector<at::Tensor>{
        torch::randn({8, 3, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast),
        torch::randn({5, 4}).t()};
  };
  auto forward = [](const std::vector<at::Tensor>& p, const at::Tensor& x) {
    auto h = torch::conv2d(x, p[0]).flatten(1);           // 2 x 8*4*4 = 2 x 128
    return h.narrow(1, 0, 4).matmul(p[1]).pow(2).mean();  // 2 x 4 @ 4 x 5
  };
  for (bool sgd : {false, true}) {
    SCOPED_TRACE(sgd ? "SGD" : "AdamW");
    auto ours = make(), ref = make();
    for (auto& p : ours) p.requires_grad_();
    for (auto& p : ref) p = p.contiguous().requires_grad_();
    ASSERT_FALSE(ours[0].is_contiguous());
    ASSERT_FALSE(ours[1].is_contiguous());
    std::unique_ptr<o::Optimizer> our_opt, ref_opt;
    if (sgd) {
      our_opt = std::make_unique<cppfabric::optim::SGD>(ours, o::SGDOptions(1e-3).momentum(0.9));
      ref_opt = std::make_unique<o::SGD>(ref, o::SGDOptions(1e-3).momentum(0.9));
    } else {
      our_opt = std::make_unique<cppfabric::optim::AdamW>(ours, o::AdamWOptions(1e-2));
      ref_opt = std::make_unique<o::AdamW>(ref, o::AdamWOptions(1e-2));
    }
    double worst = 0;
    for (int step = 0; step < 10; ++step) {
      torch::manual_seed(50 + step);
      const auto x = torch::randn({2, 3, 6, 6});
      for (auto* opt : {our_opt.get(), ref_opt.get()}) opt->zero_grad();
      forward(ours, x).backward();
      forward(ref, x).backward();
      if (step == 2) {  // gradients set by hand, in the default layout
        for (auto& p : ours) p.mutable_grad() = p.grad().contiguous();
      }
      our_opt->step();
      ref_opt->step();
      for (std::size_t i = 0; i < ours.size(); ++i) {
        worst = std::max(worst, (ours[i] - ref[i]).abs().max().item<double>());
      }
      if (step == 4) {  // the state as a checkpoint loads it: contiguous
        for (auto& [key, state] : our_opt->state()) {
          if (auto* adamw = dynamic_cast<o::AdamWParamState*>(state.get())) {
            adamw->exp_avg(adamw->exp_avg().contiguous());
            adamw->exp_avg_sq(adamw->exp_avg_sq().contiguous());
          } else if (auto* momentum = dynamic_cast<o::SGDParamState*>(state.get())) {
            momentum->momentum_buffer(momentum->momentum_buffer().contiguous());
          }
        }
      }
    }
    EXPECT_LE(worst, 1e-5);
    EXPECT_TRUE(ours[0].is_contiguous(at::MemoryFormat::ChannelsLast)) << "the layout is kept";
    EXPECT_GT((ours[0] - make()[0]).abs().max().item<double>(), 1e-3) << "training moved them";
  }
}

TEST(FusedOptimizers, UnsupportedParametersAreClearErrors) {
  // Every other column: its elements do not fill their memory.
  auto weight = torch::randn({4, 6}).slice(1, 0, 6, 2).detach().requires_grad_();
  cppfabric::optim::AdamW opt({weight}, o::AdamWOptions(1e-2));
  weight.sum().backward();
  try {
    opt.step();
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("parameter 0 of param group 0"), std::string::npos) << message;
    EXPECT_NE(message.find("not dense"), std::string::npos) << message;
  }
  auto ints = torch::zeros({3}, torch::kFloat64).requires_grad_();
  cppfabric::optim::SGD sgd({ints}, o::SGDOptions(0.1));
  ints.mutable_grad() = torch::zeros({3}, torch::kFloat32);
  EXPECT_THROW(sgd.step(), std::invalid_argument);
}

}  // namespace

namespace {

// GradScaler hands its scale and inf flag to our optimizers (no unscale pass, no host read on a
// GPU); the training equals GradScaler + LibTorch's AdamW, overflowing steps included.
TEST(FusedOptimizers, GradScalerHandsTheScaleToTheKernel) {
  auto a = make_model(6), b = make_model(6);
  o::AdamW ref(a->parameters(), o::AdamWOptions(1e-2).weight_decay(0.01));
  cppfabric::optim::AdamW ours(b->parameters(), o::AdamWOptions(1e-2).weight_decay(0.01));
  cppfabric::precision::GradScaler scale_a("cpu"), scale_b("cpu");
  int skipped = 0;
  for (int step = 0; step < 12; ++step) {
    torch::manual_seed(step);
    auto x = torch::randn({8, 6});
    bool stepped[2];
    int k = 0;
    for (auto [model, opt, scaler] :
         {std::tuple<torch::nn::Sequential*, o::Optimizer*, cppfabric::precision::GradScaler*>{
              &a, &ref, &scale_a},
          {&b, &ours, &scale_b}}) {
      opt->zero_grad();
      auto loss = (*model)->forward(x).pow(2).mean();
      if (step == 3 || step == 7) loss = loss * std::numeric_limits<float>::infinity();
      scaler->scale(loss).backward();
      stepped[k++] = scaler->step(*opt);
      scaler->update();
    }
    EXPECT_EQ(stepped[0], stepped[1]) << "step " << step;
    skipped += stepped[1] ? 0 : 1;
  }
  EXPECT_EQ(skipped, 2);
  EXPECT_EQ(scale_a.get_scale(), scale_b.get_scale());
  EXPECT_LE(max_difference(*a, *b), 1e-6);
  EXPECT_GT(max_difference(*a, *make_model(6)), 1e-3);
}

}  // namespace
