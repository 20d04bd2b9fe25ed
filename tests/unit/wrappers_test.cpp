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
