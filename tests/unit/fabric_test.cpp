// Fabric on one device: setup, wrappers, backward, clipping, devices, printing, logging,
// collectives at world size 1, callbacks, seeding and the init/precision guards.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>

#include "test_utils.hpp"
#include "unit/models.hpp"

using cppfabric::Fabric;
using cppfabric::testing::CaptureConsole;
using cppfabric::testing::cpu_fabric;
using cppfabric::testing::Net;
using cppfabric::testing::NetImpl;
using cppfabric::testing::ScopedEnv;
using cppfabric::testing::sgd;
using cppfabric::testing::TwoHeads;

namespace {

struct Recorder : cppfabric::Callback {
  int setups = 0, steps = 0;
  std::vector<std::string> hooks;
  int last_value = 0;
  void on_after_setup(Fabric&, torch::nn::Module&) override { ++setups; }
  void on_after_optimizer_step(cppfabric::strategies::Strategy&,
                               torch::optim::Optimizer&) override {
    ++steps;
  }
  void on_hook(std::string_view name, const cppfabric::HookArgs& args) override {
    hooks.emplace_back(name);
    if (args.size() == 1) last_value = args.get<int>(0);
  }
};

struct MemoryLogger : cppfabric::loggers::Logger {
  std::string name() const override { return "memory"; }
  void log_metrics(const Metrics& metrics, std::optional<int64_t> step) override {
    for (const auto& [k, v] : metrics) rows.push_back({k, v, step.value_or(-1)});
  }
  struct Row {
    std::string key;
    double value;
    int64_t step;
  };
  std::vector<Row> rows;
};

}  // namespace

// ------------------------------------------------------------------ setup

TEST(FabricSetup, ReturnsModuleAndOptimizer) {
  Fabric fabric = cpu_fabric();
  Net model;
  auto optimizer = sgd(*model);
  auto [net, opt] = fabric.setup(model, optimizer);
  static_assert(std::is_same_v<decltype(net), cppfabric::FabricModule<NetImpl>>);
  static_assert(std::is_same_v<decltype(opt), cppfabric::FabricOptimizer>);
  EXPECT_EQ(net.module().get(), model.ptr().get());
  EXPECT_EQ(net->fc1.ptr().get(), model->fc1.ptr().get());
  EXPECT_EQ(&opt.optimizer(), optimizer.get());
  EXPECT_EQ(net.device(), c10::Device(c10::kCPU));
  EXPECT_EQ(net.parameters().size(), 4u);
  auto state = net.state_dict();
  EXPECT_EQ(state.size(), 5u);
  EXPECT_TRUE(state.contains("fc1.weight"));
  EXPECT_TRUE(state.contains("scale"));
}

TEST(FabricSetup, ModuleOnlyAndSharedPtr) {
  Fabric fabric = cpu_fabric();
  auto module = std::make_shared<NetImpl>();
  auto net = fabric.setup(module);
  static_assert(std::is_same_v<decltype(net), cppfabric::FabricModule<NetImpl>>);
  EXPECT_EQ(net(torch::ones({3, 4})).sizes(), (std::vector<int64_t>{3, 1}));
}

TEST(FabricSetup, SeveralOptimizers) {
  Fabric fabric = cpu_fabric();
  Net model;
  auto a =
      std::make_shared<torch::optim::SGD>(model->fc1->parameters(), torch::optim::SGDOptions(0.1));
  auto b = std::make_shared<torch::optim::Adam>(model->fc2->parameters(),
                                                torch::optim::AdamOptions(0.1));
  auto [net, opt_a, opt_b] = fabric.setup(model, a, b);
  EXPECT_EQ(&opt_b.optimizer(), b.get());
  auto [x, y] = fabric.setup_optimizers(a, b);
  EXPECT_EQ(&x.optimizer(), a.get());
  auto single = fabric.setup_optimizers(a);
  static_assert(std::is_same_v<decltype(single), cppfabric::FabricOptimizer>);
}

// Passing a FabricModule / FabricOptimizer back into setup() no longer compiles: a static_assert
// with the documented message (tests/compile_fail/setup_twice.cpp, ctest compile_fail_*). The same
// raw model again is accepted, as in Python, and shares the module.
TEST(FabricSetup, TheSameRawModelTwiceIsAccepted) {
  Fabric fabric = cpu_fabric();
  Net model;
  auto optimizer = sgd(*model);
  auto [net, opt] = fabric.setup(model, optimizer);
  auto [again, opt_again] = fabric.setup(model, optimizer);
  EXPECT_EQ(again.module().get(), net.module().get());
  EXPECT_EQ(again.forward_module().get(), net.forward_module().get());
}

TEST(FabricSetup, NoOptimizersIsAnError) {
  Fabric fabric = cpu_fabric();
  EXPECT_THROW_WITH(fabric.setup_optimizers(), std::invalid_argument,
                    "`setup_optimizers` requires at least one optimizer as input.");
}

TEST(FabricSetup, OptimizerOfAnotherModule) {
  Fabric fabric = cpu_fabric();
  Net model, other;
  auto optimizer = sgd(*other);
  EXPECT_THROW_WITH(fabric.setup(model, optimizer), std::invalid_argument,
                    "not a parameter of the module", "parameters()");
}

TEST(FabricSetup, NullModuleAndOptimizer) {
  Fabric fabric = cpu_fabric();
  std::shared_ptr<NetImpl> none;
  EXPECT_THROW_WITH(fabric.setup(none), std::invalid_argument, "null");
  Net model;
  std::shared_ptr<torch::optim::SGD> no_opt;
  EXPECT_THROW_WITH(fabric.setup(model, no_opt), std::invalid_argument, "null");
}

TEST(FabricSetup, MetaParametersInSetupOptimizers) {
  Fabric fabric = cpu_fabric();
  auto p = torch::empty({2}, torch::TensorOptions().device(torch::kMeta)).requires_grad_();
  auto optimizer = std::make_shared<torch::optim::SGD>(std::vector<torch::Tensor>{p}, 0.1);
  EXPECT_THROW_WITH(fabric.setup_optimizers(optimizer), std::runtime_error, "meta-device");
}

TEST(FabricSetup, CallbacksFire) {
  auto recorder = std::make_shared<Recorder>();
  Fabric fabric({.accelerator = "cpu", .callbacks = {recorder}});
  Net model;
  auto optimizer = sgd(*model);
  auto [net, opt] = fabric.setup(model, optimizer);
  fabric.setup_module(Net());  // setup_module does not fire on_after_setup
  EXPECT_EQ(recorder->setups, 1);
  opt.zero_grad();
  fabric.backward(net(torch::ones({2, 4})).sum());
  opt.step();
  opt.step();
  EXPECT_EQ(recorder->steps, 2);
  fabric.call("on_epoch_end", 7);
  ASSERT_EQ(recorder->hooks.size(), 1u);
  EXPECT_EQ(recorder->hooks[0], "on_epoch_end");
  EXPECT_EQ(recorder->last_value, 7);
  EXPECT_THROW_WITH(fabric.call("on_epoch_end", std::string("x")), std::invalid_argument,
                    "argument 0 has type");
  EXPECT_EQ(fabric.callbacks().size(), 1u);
}

// ------------------------------------------------------------------ forward, backward, step

TEST(FabricTraining, StepMatchesRawLibTorch) {
  torch::manual_seed(0);
  Net raw_model;
  Net fabric_model;
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < raw_model->parameters().size(); ++i) {
    fabric_model->parameters()[i].copy_(raw_model->parameters()[i]);
  }
  auto x = torch::randn({16, 4}), y = torch::randn({16, 1});

  auto raw_opt = sgd(*raw_model);
  Fabric fabric = cpu_fabric();
  auto [net, opt] = fabric.setup(fabric_model, sgd(*fabric_model));
  for (int step = 0; step < 5; ++step) {
    torch::AutoGradMode grad(true);
    raw_opt->zero_grad();
    torch::mse_loss(raw_model(x), y).backward();
    raw_opt->step();
    opt.zero_grad();
    fabric.backward(torch::mse_loss(net(x), y));
    opt.step();
  }
  for (std::size_t i = 0; i < raw_model->parameters().size(); ++i) {
    EXPECT_TRUE(torch::equal(raw_model->parameters()[i], fabric_model->parameters()[i]));
  }
}

TEST(FabricTraining, BackwardArguments) {
  Fabric fabric = cpu_fabric();
  auto w = torch::ones({3}, torch::requires_grad());
  auto y = w * 2;
  fabric.backward(y, torch::full({3}, 0.5), /*retain_graph=*/true);
  EXPECT_TRUE(torch::allclose(w.grad(), torch::full({3}, 1.0)));
  fabric.backward(y, torch::ones({3}));
  EXPECT_TRUE(torch::allclose(w.grad(), torch::full({3}, 3.0)));
  EXPECT_THROW(fabric.backward(torch::Tensor()), std::invalid_argument);
}

// ------------------------------------------------------------------ clip_gradients

TEST(FabricClip, Errors) {
  Fabric fabric = cpu_fabric();
  Net model;
  auto [net, opt] = fabric.setup(model, sgd(*model));
  EXPECT_THROW_WITH(fabric.clip_gradients(net, opt, {.clip_val = 1.0, .max_norm = 1.0}),
                    std::invalid_argument, "Only one of `clip_val` or `max_norm` can be set");
  EXPECT_THROW_WITH(fabric.clip_gradients(net, opt, {}), std::invalid_argument,
                    "You have to specify either `clip_val` or `max_norm`");
}

TEST(FabricClip, NormMatchesLibTorch) {
  torch::manual_seed(1);
  Net a, b;
  {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < a->parameters().size(); ++i)
      b->parameters()[i].copy_(a->parameters()[i]);
  }
  auto x = torch::randn({8, 4}) * 10;
  (a(x).pow(2).sum()).backward();
  (b(x).pow(2).sum()).backward();
  const double expected = torch::nn::utils::clip_grad_norm_(a->parameters(), 0.5);

  Fabric fabric = cpu_fabric();
  auto [net, opt] = fabric.setup(b, sgd(*b));
  auto norm = fabric.clip_gradients(net, opt, {.max_norm = 0.5});
  EXPECT_NEAR(norm.item<double>(), expected, 1e-3 * expected);
  for (std::size_t i = 0; i < a->parameters().size(); ++i) {
    EXPECT_TRUE(torch::allclose(a->parameters()[i].grad(), b->parameters()[i].grad(), 1e-5, 1e-6));
  }
}

TEST(FabricClip, ValueAndNonFinite) {
  Fabric fabric = cpu_fabric();
  Net model;
  auto [net, opt] = fabric.setup(model, sgd(*model));
  fabric.backward(net(torch::ones({2, 4}) * 100).sum());
  EXPECT_FALSE(fabric.clip_gradients(net, opt, {.clip_val = 0.01}).defined());
  for (const auto& p : model->parameters())
    EXPECT_LE(p.grad().abs().max().item<double>(), 0.01 + 1e-9);
  model->fc1->weight.grad()[0][0] = std::numeric_limits<float>::infinity();
  EXPECT_THROW_WITH(fabric.clip_gradients(net, opt, {.max_norm = 1.0}), std::runtime_error,
                    "non-finite");
  EXPECT_NO_THROW(fabric.clip_gradients(net, opt, {.max_norm = 1.0, .error_if_nonfinite = false}));
}

// ------------------------------------------------------------------ precision guards

TEST(FabricPrecision, DoubleConvertsModuleInputsAndOutputs) {
  Fabric fabric = cpu_fabric("64-true");
  Net model;
  auto net = fabric.setup(model);
  EXPECT_EQ(model->fc1->weight.scalar_type(), torch::kFloat64);
  auto out = net(torch::ones({2, 4}));
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
  EXPECT_EQ(torch::get_default_dtype_as_scalartype(), torch::kFloat32);
}

TEST(FabricPrecision, InitGuardsSetTheDefaultDtype) {
  Fabric fabric = cpu_fabric("64-true");
  {
    auto guard = fabric.init_module();
    Net model;
    EXPECT_EQ(model->fc1->weight.scalar_type(), torch::kFloat64);
    EXPECT_EQ(torch::ones({1}).scalar_type(), torch::kFloat64);
  }
  EXPECT_EQ(torch::ones({1}).scalar_type(), torch::kFloat32);
  {
    auto guard = fabric.init_tensor();
    EXPECT_EQ(torch::zeros({1}).scalar_type(), torch::kFloat64);
  }
  EXPECT_EQ(torch::zeros({1}).scalar_type(), torch::kFloat32);
  {
    auto guard = fabric.autocast();
    EXPECT_EQ(torch::zeros({1}).scalar_type(), torch::kFloat64);
  }
  EXPECT_EQ(torch::zeros({1}).scalar_type(), torch::kFloat32);
}

TEST(FabricPrecision, GuardRestoresOnException) {
  Fabric fabric = cpu_fabric("64-true");
  try {
    auto guard = fabric.init_tensor();
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(torch::get_default_dtype_as_scalartype(), torch::kFloat32);
}

TEST(FabricPrecision, DoubleTrainsAndMatchesFloat) {
  auto train = [](const char* precision) {
    torch::manual_seed(3);
    Fabric fabric = cpu_fabric(precision);
    Net model;
    auto [net, opt] = fabric.setup(model, sgd(*model, 0.05));
    auto x = torch::randn({64, 4}), y = x.sum(1, true);
    double first = 0, last = 0;
    for (int i = 0; i < 200; ++i) {
      opt.zero_grad();
      auto loss = torch::mse_loss(net(x), y);
      fabric.backward(loss);
      opt.step();
      (i == 0 ? first : last) = loss.item<double>();
    }
    EXPECT_LT(last, first / 10) << precision;
    return last;
  };
  EXPECT_NEAR(train("64-true"), train("32-true"), 1e-3);
}

// ------------------------------------------------------------------ devices

TEST(FabricDevices, ToDeviceContainers) {
  Fabric fabric = cpu_fabric();
  auto t = torch::ones({2});
  EXPECT_TRUE(fabric.to_device(t).is_cpu());
  auto v = fabric.to_device(std::vector<torch::Tensor>{t, t});
  EXPECT_EQ(v.size(), 2u);
  auto m = fabric.to_device(std::map<std::string, torch::Tensor>{{"a", t}});
  EXPECT_TRUE(m.at("a").is_cpu());
  auto tup = fabric.to_device(std::make_tuple(t, 3, std::string("x")));
  EXPECT_EQ(std::get<1>(tup), 3);
  auto pair = fabric.to_device(std::make_pair(t, std::vector<torch::Tensor>{t}));
  EXPECT_EQ(pair.second.size(), 1u);
  Net model;
  auto moved = fabric.to_device(model);
  EXPECT_EQ(moved.ptr().get(), model.ptr().get());
  EXPECT_FALSE(fabric.to_device(torch::Tensor()).defined());
}

TEST(FabricDevices, CudaToDevice) {
  if (torch::cuda::device_count() == 0) GTEST_SKIP() << "needs a GPU";
  Fabric fabric({.accelerator = "cuda", .devices = 1});
  Net model;
  auto net = fabric.setup(model);
  EXPECT_TRUE(model->fc1->weight.is_cuda());
  EXPECT_TRUE(fabric.to_device(torch::ones({2})).is_cuda());
  EXPECT_TRUE(net(fabric.to_device(torch::ones({2, 4}))).is_cuda());
}

// ------------------------------------------------------------------ print, log

TEST(FabricOutput, PrintUsesFmt) {
  Fabric fabric = cpu_fabric();
  ::testing::internal::CaptureStdout();
  fabric.print("Epoch {} | Loss: {:.4f}", 3, 0.123456);
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "Epoch 3 | Loss: 0.1235\n");
}

TEST(FabricOutput, LogGoesToEveryLogger) {
  auto a = std::make_shared<MemoryLogger>(), b = std::make_shared<MemoryLogger>();
  Fabric fabric({.accelerator = "cpu", .loggers = {a, b}});
  EXPECT_EQ(fabric.logger(), a);
  EXPECT_EQ(fabric.loggers().size(), 2u);
  fabric.log("loss", 0.5, 3);
  fabric.log("acc", torch::tensor({0.75}));
  fabric.log_dict({{"x", 1.0}, {"y", 2.0}}, 4);
  ASSERT_EQ(b->rows.size(), 4u);
  EXPECT_EQ(a->rows[0].key, "loss");
  EXPECT_EQ(a->rows[0].step, 3);
  EXPECT_DOUBLE_EQ(a->rows[1].value, 0.75);
  EXPECT_EQ(a->rows[1].step, -1);
  EXPECT_THROW_WITH(fabric.log("bad", torch::ones({2})), std::invalid_argument, "`bad`",
                    "does not contain a single element");
}

TEST(FabricOutput, LoggerWithoutLoggers) {
  Fabric fabric = cpu_fabric();
  EXPECT_THROW(fabric.logger(), std::out_of_range);
  EXPECT_NO_THROW(fabric.log("x", 1.0));
}

// ------------------------------------------------------------------ collectives at world size 1

TEST(FabricCollectives, IdentityOnOneProcess) {
  Fabric fabric = cpu_fabric();
  fabric.launch();
  auto t = torch::arange(4);
  EXPECT_TRUE(torch::equal(fabric.all_reduce(t, "sum"), t));
  EXPECT_TRUE(torch::equal(fabric.all_gather(t), t)) << "no extra dimension at world size 1";
  EXPECT_TRUE(torch::equal(fabric.broadcast(t), t));
  fabric.barrier();
  EXPECT_EQ(fabric.all_reduce(3).scalar_type(), torch::kInt32);
  EXPECT_EQ(fabric.all_reduce(2.5).scalar_type(), torch::kFloat32);
  EXPECT_EQ(fabric.all_reduce(true).scalar_type(), torch::kUInt8);
  EXPECT_THROW_WITH(fabric.all_reduce(t, "median"), std::invalid_argument, "median", "sum", "mean");
  EXPECT_THROW_WITH(fabric.broadcast(t, 1), std::invalid_argument, "src=1");
  {
    auto first = fabric.rank_zero_first();
    auto local = fabric.rank_zero_first(/*local=*/true);
  }
  Net model;
  auto net = fabric.setup(model);
  auto guard = fabric.no_backward_sync(net);
  EXPECT_FALSE(guard.active());
}

// ------------------------------------------------------------------ launch

TEST(FabricLaunch, FunctionResult) {
  Fabric fabric = cpu_fabric();
  const int result = fabric.launch([](Fabric& f) { return f.world_size() + 41; });
  EXPECT_EQ(result, 42);
  EXPECT_NO_THROW(fabric.launch());  // idempotent
}

// ------------------------------------------------------------------ seeding

TEST(FabricSeed, ReproducibleAndSetsEnvironment) {
  ScopedEnv seed_env("PL_GLOBAL_SEED", std::nullopt), workers_env("PL_SEED_WORKERS", std::nullopt);
  EXPECT_EQ(Fabric::seed_everything(123), 123u);
  auto a = torch::rand({3});
  Fabric::seed_everything(123);
  EXPECT_TRUE(torch::equal(a, torch::rand({3})));
  EXPECT_STREQ(std::getenv("PL_GLOBAL_SEED"), "123");
  EXPECT_STREQ(std::getenv("PL_SEED_WORKERS"), "1") << "Fabric's default is workers=true";
  Fabric::seed_everything(5, false);
  EXPECT_STREQ(std::getenv("PL_SEED_WORKERS"), "0");
}

TEST(FabricSeed, FromEnvironmentAndDefault) {
  {
    ScopedEnv seed_env("PL_GLOBAL_SEED", "77");
    EXPECT_EQ(Fabric::seed_everything(), 77u);
  }
  {
    ScopedEnv seed_env("PL_GLOBAL_SEED", std::nullopt);
    CaptureConsole console;
    EXPECT_EQ(Fabric::seed_everything(), 0u);
    EXPECT_NE(console.text().find("No seed found, seed set to 0"), std::string::npos);
    EXPECT_NE(console.text().find("Seed set to 0"), std::string::npos);
  }
  ScopedEnv restore("PL_GLOBAL_SEED", std::nullopt);
}

TEST(FabricSeed, Errors) {
  ScopedEnv restore("PL_GLOBAL_SEED", std::nullopt);
  EXPECT_THROW_WITH(Fabric::seed_everything(-1), std::invalid_argument, "-1", "not in bounds",
                    "4294967295");
  EXPECT_THROW_WITH(Fabric::seed_everything(int64_t{4294967296}), std::invalid_argument,
                    "4294967296");
  EXPECT_EQ(Fabric::seed_everything(int64_t{4294967295}), 4294967295u);
  ScopedEnv bad("PL_GLOBAL_SEED", "abc");
  EXPECT_THROW_WITH(Fabric::seed_everything(), std::invalid_argument,
                    "Invalid seed specified via PL_GLOBAL_SEED: 'abc'");
}

// ------------------------------------------------------------------ Guard

TEST(Guard, RunsInReverseAndOnce) {
  std::vector<int> order;
  {
    cppfabric::Guard g([&] { order.push_back(1); });
    g.push([&] { order.push_back(2); });
    cppfabric::Guard moved = std::move(g);
    EXPECT_FALSE(g.active());
  }
  EXPECT_EQ(order, (std::vector<int>{2, 1}));
}
