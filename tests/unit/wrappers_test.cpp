// The wrappers: FabricModule (forward with the precision's casts, train/eval, the backward
// guard) on one device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>

#include "test_utils.hpp"
#include "unit/models.hpp"

using cppfabric::Fabric;
using cppfabric::testing::cpu_fabric;
using cppfabric::testing::Net;
using cppfabric::testing::TwoHeads;

TEST(FabricTraining, ForwardPassesNonTensorArgsAndTuples) {
  Fabric fabric({.accelerator = "cpu", .precision = "64-true"});
  auto net = fabric.setup(TwoHeads());
  auto [a, b] = net(torch::ones({2, 4}), int64_t{3});
  EXPECT_EQ(a.scalar_type(), torch::kFloat32) << "outputs come back in the default dtype";
  EXPECT_EQ(b.scalar_type(), torch::kLong) << "integer outputs are left alone";
}

TEST(FabricTraining, TrainEvalPassThrough) {
  Fabric fabric = cpu_fabric();
  Net model;
  auto net = fabric.setup(model);
  net.eval();
  EXPECT_FALSE(model->is_training());
  EXPECT_FALSE(net.is_training());
  net.train();
  EXPECT_TRUE(model->is_training());
}

TEST(FabricTraining, RawBackwardIsAllowedWith32True) {
  Fabric fabric = cpu_fabric();
  auto net = fabric.setup(Net());
  EXPECT_NO_THROW(net(torch::ones({1, 4})).sum().backward());
}

// A precision plugin that changes backward: FabricModule outputs must refuse loss.backward().
struct ScalingPrecision : cppfabric::precision::Precision {
  std::string name() const override { return "scaling"; }
  bool requires_fabric_backward() const override { return true; }
  void backward(const at::Tensor& t, const at::Tensor& g, std::optional<bool> r, bool c) override {
    ++calls;
    Precision::backward(t, g, r, c);
  }
  int calls = 0;
};

TEST(FabricTraining, BackwardRequiredWhenThePrecisionOverridesIt) {
  auto precision = std::make_shared<ScalingPrecision>();
  Fabric fabric({.accelerator = "cpu", .plugins = {precision}});
  auto net = fabric.setup(Net());
  EXPECT_THROW_WITH(net(torch::ones({1, 4})).sum().backward(), std::exception,
                    "requires you to call `fabric.backward(loss)` instead of `loss.backward()`");
  fabric.backward(net(torch::ones({1, 4})).sum());
  EXPECT_EQ(precision->calls, 1);
}

// ------------------------------------------------------------------ methods other than forward

using cppfabric::Guard;

namespace {

struct CodecImpl : torch::nn::Module {
  CodecImpl() {
    enc = register_module("enc", torch::nn::Linear(4, 2));
    dec = register_module("dec", torch::nn::Linear(2, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return dec(enc(x)); }
  torch::Tensor encode(const torch::Tensor& x) { return enc(x); }
  std::tuple<torch::Tensor, torch::Tensor> both(const torch::Tensor& x, int64_t k) {
    auto z = enc(x);
    return {z * k, dec(z)};
  }
  torch::nn::Linear enc{nullptr}, dec{nullptr};
};
TORCH_MODULE(Codec);

/// 64-true that counts how often its forward context is entered.
struct CountingDouble : cppfabric::precision::DoublePrecision {
  Guard forward_context() override {
    ++entered;
    return DoublePrecision::forward_context();
  }
  int entered = 0;
};

}  // namespace

TEST(FabricModuleCall, AnotherMethodRunsAsForwardDoes) {
  auto precision = std::make_shared<CountingDouble>();
  Fabric fabric({.accelerator = "cpu", .plugins = {precision}});
  auto net = fabric.setup(Codec());
  ASSERT_EQ(net.dtype(), torch::kDouble);
  // The raw method gets a float input against float64 weights and fails; through call() the
  // input is converted, the precision context is entered and the output cast back.
  EXPECT_THROW(net->encode(torch::ones({3, 4})), std::exception);
  auto z = net.call(&CodecImpl::encode, torch::ones({3, 4}));
  EXPECT_EQ(z.scalar_type(), torch::kFloat32);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(precision->entered, 1);
  auto [scaled, decoded] = net.call(&CodecImpl::both, torch::ones({3, 4}), int64_t{2});
  EXPECT_EQ(scaled.scalar_type(), torch::kFloat32);
  EXPECT_EQ(decoded.sizes(), (std::vector<int64_t>{3, 4}));
  auto round_trip = net.call(
      [](CodecImpl& m, const torch::Tensor& x) { return m.dec(m.encode(x)); }, torch::ones({1, 4}));
  EXPECT_EQ(round_trip.scalar_type(), torch::kFloat32);
  EXPECT_EQ(precision->entered, 3);
  EXPECT_TRUE(torch::allclose(round_trip, net(torch::ones({1, 4}))));
}

// ------------------------------------------------------------------ device, dtype, state

TEST(FabricModuleProperties, DeviceAndDtypeFollowTheParameters) {
  Fabric fabric = cpu_fabric();
  auto net = fabric.setup(Net());
  EXPECT_EQ(net.device(), c10::Device(c10::kCPU));
  EXPECT_EQ(net.dtype(), torch::kFloat32);
  net.to(torch::kFloat64);
  EXPECT_EQ(net.dtype(), torch::kFloat64);
  net->to(torch::kFloat16);  // behind the wrapper's back
  EXPECT_EQ(net.dtype(), torch::kFloat16);
  if (torch::cuda::is_available()) {
    net.to(c10::Device(c10::kCUDA, 0));
    EXPECT_TRUE(net.device().is_cuda());
    net->to(c10::Device(c10::kCPU));
    EXPECT_TRUE(net.device().is_cpu());
  }
}

namespace {
/// A module whose parameter lives on the meta device (LibTorch cannot move a module there).
struct OnMetaImpl : torch::nn::Module {
  OnMetaImpl() { w = register_parameter("w", torch::empty({2, 2}, torch::kMeta)); }
  torch::Tensor forward(const torch::Tensor& x) { return x.matmul(w); }
  torch::Tensor w;
};
TORCH_MODULE(OnMeta);
}  // namespace

TEST(SetupOptions, MoveToDeviceFalseLeavesTheParametersWhereTheyAre) {
  Fabric fabric = cpu_fabric();
  OnMeta model;
  auto optimizer = cppfabric::testing::sgd(*model);
  auto [net, opt] =
      fabric.setup(model, optimizer, cppfabric::SetupOptions{.move_to_device = false});
  EXPECT_TRUE(model->w.is_meta());
  EXPECT_TRUE(net.device().is_meta());
  auto alone = fabric.setup_module(OnMeta(), cppfabric::SetupOptions{.move_to_device = false});
  EXPECT_TRUE(alone.device().is_meta());
  auto positional = fabric.setup_module(OnMeta(), false);
  EXPECT_TRUE(positional.device().is_meta());
  // The default moves, which a meta parameter cannot do: proof that the option was honoured.
  EXPECT_ANY_THROW(fabric.setup_module(OnMeta()));
  auto moved = fabric.setup_module(Net());
  EXPECT_EQ(moved.device(), fabric.device());
}

TEST(FabricModuleState, LoadStateDictTakesStateDictsAndValues) {
  Fabric fabric = cpu_fabric();
  auto a = fabric.setup_module(Net());
  auto b = fabric.setup_module(Net());
  auto result = b.load_state_dict(a.state_dict());
  EXPECT_TRUE(result.missing_keys.empty());
  EXPECT_TRUE(result.unexpected_keys.empty());
  EXPECT_TRUE(torch::equal(a->fc1->weight, b->fc1->weight));

  cppfabric::Value partial = cppfabric::Value::dict(
      {{"fc1.weight", torch::zeros({8, 4})}, {"extra", torch::ones({1})}}, /*ordered=*/true);
  EXPECT_THROW_WITH(b.load_state_dict(partial), std::runtime_error, "fc2.weight", "extra");
  auto loose = b.load_state_dict(partial, /*strict=*/false);
  EXPECT_EQ(loose.missing_keys,
            (std::vector<std::string>{"fc1.bias", "fc2.bias", "fc2.weight", "scale"}));
  EXPECT_EQ(loose.unexpected_keys, (std::vector<std::string>{"extra"}));
  EXPECT_TRUE(torch::equal(b->fc1->weight, torch::zeros({8, 4})));
  std::map<std::string, at::Tensor> as_map{{"fc2.bias", torch::full({1}, 3.0f)}};
  b.load_state_dict(as_map, /*strict=*/false);
  EXPECT_EQ(b->fc2->bias.item<float>(), 3.0f);
}

// ------------------------------------------------------------------ optimizer step(closure), state

TEST(FabricOptimizerClosure, StepReturnsTheClosuresLossAsTheRawOptimizerDoes) {
  torch::manual_seed(3);
  Net raw, wrapped;
  {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < raw->parameters().size(); ++i)
      wrapped->parameters()[i].copy_(raw->parameters()[i]);
  }
  auto x = torch::randn({8, 4}), y = torch::randn({8, 1});
  auto raw_opt = std::make_shared<torch::optim::SGD>(raw->parameters(),
                                                     torch::optim::SGDOptions(0.1).momentum(0.9));
  Fabric fabric = cpu_fabric();
  auto [net, opt] = fabric.setup(
      wrapped, std::make_shared<torch::optim::SGD>(wrapped->parameters(),
                                                   torch::optim::SGDOptions(0.1).momentum(0.9)));
  for (int step = 0; step < 3; ++step) {
    auto raw_loss = raw_opt->step([&] {
      raw_opt->zero_grad();
      auto loss = torch::mse_loss(raw(x), y);
      loss.backward();
      return loss;
    });
    auto loss = opt.step([&] {
      opt.zero_grad();
      auto l = torch::mse_loss(net(x), y);
      fabric.backward(l);
      return l;
    });
    EXPECT_TRUE(torch::equal(loss, raw_loss)) << "step " << step;
  }
  for (std::size_t i = 0; i < raw->parameters().size(); ++i)
    EXPECT_TRUE(torch::equal(raw->parameters()[i], wrapped->parameters()[i]));
}

TEST(FabricOptimizerClosure, LbfgsEvaluatesTheClosureAsOftenAsItNeeds) {
  torch::manual_seed(4);
  Fabric fabric = cpu_fabric();
  Net model;
  auto lbfgs = std::make_shared<torch::optim::LBFGS>(model->parameters(),
                                                     torch::optim::LBFGSOptions(0.5).max_iter(10));
  auto [net, opt] = fabric.setup(model, lbfgs);
  auto x = torch::randn({16, 4}), y = x.sum(1, true);
  int evaluations = 0;
  auto closure = [&] {
    ++evaluations;
    opt.zero_grad();
    auto l = torch::mse_loss(net(x), y);
    fabric.backward(l);
    return l;
  };
  const double before = opt.step(closure).item<double>();
  EXPECT_GT(evaluations, 1);
  torch::NoGradGuard no_grad;
  EXPECT_LT(torch::mse_loss(net(x), y).item<double>(), before);
}

TEST(FabricOptimizerState, StateDictAndLoadStateDictPassThrough) {
  Fabric fabric = cpu_fabric();
  Net first_model, second_model;
  auto [net, opt] =
      fabric.setup(first_model, std::make_shared<torch::optim::Adam>(
                                    first_model->parameters(), torch::optim::AdamOptions(0.01)));
  opt.zero_grad();
  fabric.backward(net(torch::ones({2, 4})).sum());
  opt.step();
  cppfabric::Value state = opt.state_dict();
  EXPECT_EQ(state.at("state").items().size(), first_model->parameters().size());
  EXPECT_EQ(state.at("param_groups").elements().size(), 1u);

  auto [net2, opt2] =
      fabric.setup(second_model, std::make_shared<torch::optim::Adam>(
                                     second_model->parameters(), torch::optim::AdamOptions(0.5)));
  opt2.load_state_dict(state);
  EXPECT_TRUE(opt2.state_dict() == state);
  EXPECT_DOUBLE_EQ(opt2.param_groups()[0].options().get_lr(), 0.01);
}
