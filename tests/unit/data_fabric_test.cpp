// fabric.setup_dataloaders with a fake "rank 1 of 2" strategy, as Python's tests do.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>

#include "test_utils.hpp"

using cppfabric::Fabric;
using cppfabric::FabricDataLoader;
using namespace cppfabric::data;

namespace {

/// One process pretending to be rank 1 of 2 (no process group).
class FakeRankOneOfTwo : public cppfabric::strategies::SingleDeviceStrategy {
 public:
  int global_rank() const override { return 1; }
  int world_size() const override { return 2; }
  std::optional<cppfabric::strategies::DistributedSamplerArgs> distributed_sampler_kwargs()
      const override {
    return cppfabric::strategies::DistributedSamplerArgs{.num_replicas = 2, .rank = 1};
  }
};

std::shared_ptr<TensorDataset> numbers(int64_t n) {
  return std::make_shared<TensorDataset>(torch::arange(n).to(torch::kFloat).view({n, 1}),
                                         torch::arange(n));
}

std::vector<int64_t> targets(FabricDataLoader& loader) {
  std::vector<int64_t> out;
  for (auto& batch : loader)
    for (int64_t i = 0; i < batch.target.numel(); ++i)
      out.push_back(batch.target[i].item<int64_t>());
  return out;
}

}  // namespace

TEST(DataFabric, InjectsDistributedSamplerForRankOneOfTwo) {
  cppfabric::testing::ScopedEnv seed_env("PL_GLOBAL_SEED", "5");
  Fabric fabric({.accelerator = "cpu", .strategy = std::make_shared<FakeRankOneOfTwo>()});
  DataLoader ordered(numbers(10), {.batch_size = 2});
  DataLoader shuffled(numbers(10), {.batch_size = 2, .shuffle = true});
  auto [a, b] = fabric.setup_dataloaders(ordered, shuffled);

  auto* dist_a = dynamic_cast<DistributedSampler*>(a.sampler().get());
  auto* dist_b = dynamic_cast<DistributedSampler*>(b.sampler().get());
  ASSERT_NE(dist_a, nullptr);
  ASSERT_NE(dist_b, nullptr);
  EXPECT_FALSE(dist_a->options().shuffle);  // from SequentialSampler
  EXPECT_TRUE(dist_b->options().shuffle);   // from RandomSampler
  EXPECT_EQ(dist_b->options().seed, 5u);
  EXPECT_EQ(dist_a->options().rank, 1);
  EXPECT_EQ(dist_a->options().num_replicas, 2);
  EXPECT_EQ(a.size(), 3u);  // 5 samples per rank in batches of 2

  EXPECT_EQ(targets(a), (std::vector<int64_t>{1, 3, 5, 7, 9}));
  // Each pass sets the epoch first (0, 1, ...), so the shuffled order follows the reference
  // sampler at that epoch and changes between passes.
  DistributedSampler reference(10, {.num_replicas = 2, .rank = 1, .shuffle = true, .seed = 5});
  std::vector<std::vector<int64_t>> passes;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    reference.set_epoch(epoch);
    passes.push_back(targets(b));
    EXPECT_EQ(passes.back(), reference.indices()) << "epoch " << epoch;
    EXPECT_EQ(dist_b->epoch(), epoch);
  }
  EXPECT_NE(passes[0], passes[1]);
  EXPECT_EQ(b.num_iter_calls(), 3);
}

TEST(DataFabric, UseDistributedSamplerFalseKeepsTheLoader) {
  Fabric fabric({.accelerator = "cpu", .strategy = std::make_shared<FakeRankOneOfTwo>()});
  DataLoader loader(numbers(6), {.batch_size = 3});
  auto wrapped = fabric.setup_dataloaders(
      loader, cppfabric::SetupDataloadersOptions{.use_distributed_sampler = false});
  EXPECT_EQ(wrapped.sampler()->name(), "SequentialSampler");
  EXPECT_EQ(targets(wrapped), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
}

TEST(DataFabric, ExistingDistributedSamplerIsKept) {
  Fabric fabric({.accelerator = "cpu", .strategy = std::make_shared<FakeRankOneOfTwo>()});
  auto mine = std::make_shared<DistributedSampler>(
      8, DistributedSampler::Options{.num_replicas = 4, .rank = 3, .shuffle = false});
  auto wrapped =
      fabric.setup_dataloaders(DataLoader(numbers(8), {.batch_size = 4, .sampler = mine}));
  EXPECT_EQ(wrapped.sampler(), mine);
  EXPECT_EQ(targets(wrapped), (std::vector<int64_t>{3, 7}));
}

TEST(DataFabric, CustomSamplerIsWrapped) {
  struct Reversed : Sampler {
    explicit Reversed(std::size_t n) : n(n) {}
    std::size_t size() const override { return n; }
    std::vector<int64_t> indices() override {
      std::vector<int64_t> out;
      for (std::size_t i = n; i-- > 0;) out.push_back(static_cast<int64_t>(i));
      return out;
    }
    std::string name() const override { return "Reversed"; }
    std::size_t n;
  };
  Fabric fabric({.accelerator = "cpu", .strategy = std::make_shared<FakeRankOneOfTwo>()});
  auto wrapped = fabric.setup_dataloaders(
      DataLoader(numbers(7), {.batch_size = 2, .sampler = std::make_shared<Reversed>(7)}));
  EXPECT_EQ(wrapped.sampler()->name(), "DistributedSamplerWrapper");
  // Positions 1, 3, 5 and the padding position 7 -> 0 of the order 6 5 4 3 2 1 0.
  EXPECT_EQ(targets(wrapped), (std::vector<int64_t>{5, 3, 1, 6}));
}

TEST(DataFabric, SingleDeviceLeavesSamplerAndMovesToDevice) {
  Fabric fabric({.accelerator = "cpu"});
  DataLoader loader(numbers(5), {.batch_size = 2, .shuffle = true, .seed = 0});
  auto wrapped = fabric.setup_dataloaders(loader);
  EXPECT_EQ(wrapped.sampler()->name(), "RandomSampler");
  ASSERT_TRUE(wrapped.device().has_value());
  EXPECT_EQ(*wrapped.device(), fabric.device());
  for (auto& batch : wrapped) EXPECT_EQ(batch.data.device(), fabric.device());
  auto unmoved =
      fabric.setup_dataloaders(loader, cppfabric::SetupDataloadersOptions{.move_to_device = false});
  EXPECT_FALSE(unmoved.device().has_value());
}

TEST(DataFabric, RejectsAlreadySetUpLoader) {
  Fabric fabric({.accelerator = "cpu"});
  auto wrapped = fabric.setup_dataloaders(DataLoader(numbers(4), {.batch_size = 2}));
  EXPECT_THROW_WITH(fabric.setup_dataloaders(wrapped), std::invalid_argument, "only once");
}
