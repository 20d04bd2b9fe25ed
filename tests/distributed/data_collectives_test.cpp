// Two real (forked) processes over Gloo: a model trained from a torch::data dataset through
// data::from_torch and setup_dataloaders (disjoint shards, equal parameters); collectives on
// strings, Values, numbers, vectors and maps; the same raw model set up twice under DDP.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <cppfabric/data/torch_adapter.hpp>
#include <limits>
#include <set>

#include "distributed/multiprocess.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::Fabric;
using cppfabric::Value;
using cppfabric::testing::run_ranks;

// What the launcher gives local rank `rank` of a one-node job.
struct RankEnv {
  RankEnv(int rank, int world, int port)
      : local("LOCAL_RANK", std::to_string(rank)),
        size("WORLD_SIZE", std::to_string(world)),
        master("MASTER_PORT", std::to_string(port)) {}
  cppfabric::testing::ScopedEnv local, size, master;
};

/// A torch::data dataset as users write them: example i is x = [i, i/2, 1, -i] / 10, y = i.
struct Rows : torch::data::datasets::Dataset<Rows> {
  torch::data::Example<> get(size_t index) override {
    const float i = static_cast<float>(index);
    return {torch::tensor({i, i / 2, 1.0f, -i}) / 10.0f,
            torch::tensor(static_cast<int64_t>(index))};
  }
  std::optional<size_t> size() const override { return 24; }
};

int train_from_torch_body(int rank, int port) {
  RankEnv env(rank, 2, port);
  Fabric fabric({.accelerator = "cpu", .devices = 2});
  fabric.launch();
  torch::manual_seed(1234 + rank);  // different initial weights: setup must broadcast rank 0's
  auto model = torch::nn::Linear(4, 1);
  auto optimizer =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.01));
  auto [net, opt] = fabric.setup(model, optimizer);

  auto dataset = cppfabric::data::from_torch(
      Rows{}.map(torch::data::transforms::Normalize<>(/*mean=*/0.0, /*stddev=*/0.5)));
  cppfabric::data::DataLoader loader(dataset, {.batch_size = 4, .shuffle = true, .num_workers = 2});
  auto train = fabric.setup_dataloaders(loader);
  EXPECT_EQ(train.size(), 3u) << "24 rows over 2 ranks, 4 per batch";

  // The loss over the whole dataset, before and after training.
  auto full_loss = [&] {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> xs, ys;
    for (std::size_t i = 0; i < 24; ++i) {
      auto example = dataset->get(i);
      xs.push_back(example.data.flatten());  // Normalize makes [1, 1, 4]
      ys.push_back(example.target.to(torch::kFloat) / 24.0f);
    }
    return torch::mse_loss(net(torch::stack(xs)), torch::stack(ys).unsqueeze(1)).item<double>();
  };
  const double before = full_loss();

  std::vector<std::vector<int64_t>> seen(2);
  for (int epoch = 0; epoch < 6; ++epoch) {
    for (auto& batch : train) {
      EXPECT_EQ(batch.data.device(), fabric.device());
      if (epoch < 2) {
        for (int64_t k = 0; k < batch.target.size(0); ++k)
          seen[epoch].push_back(batch.target[k].item<int64_t>());
      }
      opt.zero_grad();
      auto target = batch.target.to(torch::kFloat).unsqueeze(1) / 24.0f;
      fabric.backward(torch::mse_loss(net(batch.data.flatten(1)), target));
      opt.step();
    }
  }
  EXPECT_LT(full_loss(), before) << "the model learns";
  EXPECT_NE(seen[0], seen[1]) << "set_epoch reshuffles every epoch";

  for (int epoch = 0; epoch < 2; ++epoch) {
    EXPECT_EQ(seen[epoch].size(), 12u);
    if (seen[epoch].size() != 12u) return 1;
    auto all = fabric.all_gather(torch::tensor(seen[epoch]));  // [2, 12]
    std::set<int64_t> mine(seen[epoch].begin(), seen[epoch].end());
    std::set<int64_t> other;
    for (int64_t k = 0; k < 12; ++k) other.insert(all[1 - rank][k].item<int64_t>());
    for (int64_t index : mine) EXPECT_EQ(other.count(index), 0u) << "index " << index << " twice";
    std::set<int64_t> both = mine;
    both.insert(other.begin(), other.end());
    EXPECT_EQ(both.size(), 24u) << "the two shards cover the dataset";
  }

  // DDP keeps the replicas identical.
  auto flat = torch::cat({model->weight.detach().flatten(), model->bias.detach().flatten()});
  auto params = fabric.all_gather(flat);
  EXPECT_TRUE(torch::allclose(params[0], params[1], 0, 0)) << params;
  return ::testing::Test::HasFailure() ? 1 : 0;
}

TEST(FromTorchDistributed, TrainsOnDisjointShardsOfATorchDataDataset) {
  auto codes = run_ranks(2, train_from_torch_body, std::chrono::seconds(120));
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

int collections_body(int rank, int port) {
  RankEnv env(rank, 2, port);
  Fabric fabric({.accelerator = "cpu", .devices = 2});
  fabric.launch();

  // Strings: rank 0 picks the run directory.
  const std::string mine = rank == 0 ? "runs/version_7" : "";
  EXPECT_EQ(fabric.broadcast(mine), "runs/version_7");
  EXPECT_EQ(fabric.broadcast(rank == 1 ? "from one" : "ignored", 1), "from one");
  EXPECT_EQ(fabric.broadcast(std::string(), 0), "") << "empty strings too";

  // Numbers, exactly.
  EXPECT_EQ(fabric.broadcast(int64_t{1} << 53 | (rank + 1), 1), (int64_t{1} << 53) | 2);
  EXPECT_EQ(fabric.broadcast(0.1 * (rank + 1)), 0.1);
  EXPECT_EQ(fabric.broadcast(rank == 1, 1), true);
  EXPECT_EQ(fabric.broadcast(rank == 0 ? std::numeric_limits<uint64_t>::max() : uint64_t{0}),
            std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(fabric.broadcast(7.5f + rank, 1), 8.5f);

  // Value trees.
  Value config = Value::dict({{"epoch", 3 + rank},
                              {"lr", 0.25},
                              {"name", rank == 0 ? "zero" : "one"},
                              {"sizes", Value::list({1, 2, rank})},
                              {"weights", torch::full({2}, static_cast<float>(rank))}});
  Value got = fabric.broadcast(config, 0);
  EXPECT_EQ(got.at("epoch").to_int(), 3);
  EXPECT_EQ(got.at("name").to_string(), "zero");
  EXPECT_EQ(got.at("sizes"), Value::list({1, 2, 0}));
  EXPECT_TRUE(torch::equal(got.at("weights").to_tensor(), torch::zeros({2})));

  // all_gather / all_reduce over vectors, maps and Value trees.
  const float r = static_cast<float>(rank);
  auto gathered =
      fabric.all_gather(std::vector<at::Tensor>{torch::full({2}, r), torch::tensor({r})});
  EXPECT_EQ(gathered.size(), 2u);
  if (gathered.size() != 2u) return 1;
  EXPECT_EQ(gathered[0].sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_TRUE(torch::equal(gathered[1], torch::tensor({{0.0f}, {1.0f}})));

  // Fresh inputs for each call: on the CPU, Gloo reduces in place (as torch.distributed does).
  auto metrics = [&] {
    return std::map<std::string, at::Tensor>{{"loss", torch::tensor(1.0f + r)},
                                             {"correct", torch::tensor(int64_t{10} * (rank + 1))}};
  };
  auto mean = fabric.all_reduce(metrics());
  EXPECT_FLOAT_EQ(mean.at("loss").item<float>(), 1.5f);
  auto sum = fabric.all_reduce(metrics(), "sum");
  EXPECT_EQ(sum.at("correct").item<int64_t>(), 30);
  auto by_key = fabric.all_gather(metrics());
  EXPECT_TRUE(torch::equal(by_key.at("correct"), torch::tensor({10, 20}, torch::kInt64)))
      << by_key.at("correct");

  Value tree = Value::dict({{"a", torch::tensor({r})},
                            {"step", 5},
                            {"nested", Value::list({torch::tensor({2.0f * r})})}});
  Value reduced = fabric.all_reduce(tree, "max");
  EXPECT_EQ(reduced.at("a").to_tensor().item<float>(), 1.0f);
  EXPECT_EQ(reduced.at("step").to_int(), 5) << "non-tensor leaves are left alone";
  EXPECT_EQ(reduced.at("nested").elements()[0].to_tensor().item<float>(), 2.0f);
  Value all = fabric.all_gather(tree);
  EXPECT_EQ(all.at("a").to_tensor().sizes(), (std::vector<int64_t>{2, 1}));

  EXPECT_THROW_WITH(fabric.broadcast(std::string("x"), 2), std::invalid_argument,
                    "valid ranks are 0..1");
  EXPECT_THROW_WITH(fabric.all_reduce(metrics(), "median"), std::invalid_argument, "median");
  fabric.barrier();
  return ::testing::Test::HasFailure() ? 1 : 0;
}

TEST(CollectivesDistributed, StringsValuesNumbersVectorsAndMaps) {
  auto codes = run_ranks(2, collections_body);
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

int setup_twice_body(int rank, int port) {
  RankEnv env(rank, 2, port);
  Fabric fabric({.accelerator = "cpu", .devices = 2});
  fabric.launch();
  torch::manual_seed(99);
  auto model = torch::nn::Linear(3, 2);
  auto optimizer =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1));
  auto first = fabric.setup(model, optimizer);
  // As Python (and as on one device): the same raw model again is accepted.
  auto [net, opt] = fabric.setup(model, optimizer);
  EXPECT_EQ(net.module().get(), std::get<0>(first).module().get());

  auto x = torch::full({4, 3}, static_cast<float>(rank + 1));
  // The reference: each rank's gradient on a copy, averaged.
  auto copy = torch::nn::Linear(3, 2);
  {
    torch::NoGradGuard no_grad;
    copy->weight.copy_(model->weight);
    copy->bias.copy_(model->bias);
  }
  copy(x).pow(2).sum().backward();
  auto expected = fabric.all_reduce(copy->weight.grad().clone(), "mean");

  opt.zero_grad();
  fabric.backward(net(x).pow(2).sum());
  EXPECT_TRUE(torch::allclose(model->weight.grad(), expected)) << model->weight.grad() << expected;
  opt.step();
  return ::testing::Test::HasFailure() ? 1 : 0;
}

TEST(SetupDistributed, TheSameRawModelTwiceIsAcceptedAsOnOneDevice) {
  auto codes = run_ranks(2, setup_twice_body);
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

}  // namespace
