// Collections in samples and batches (Example::of, default_collate of tuples / vectors / maps,
// Batch::as / field, move to device), collate errors without LibTorch backtraces, and
// data::from_torch over LibTorch's own torch::data datasets.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <cppfabric/data/torch_adapter.hpp>
#include <set>

#include "test_utils.hpp"

using namespace cppfabric::data;
using cppfabric::Value;

namespace {

using TensorMap = std::map<std::string, at::Tensor>;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

/// Sample i is a map {"ids": [i, i+1, i+2], "mask": [1, 1, 0] * i, "label": i}.
struct MapSamples : Dataset {
  std::size_t size() const override { return 10; }
  Example get(std::size_t i) const override {
    const auto n = static_cast<int64_t>(i);
    return Example::of(TensorMap{{"ids", torch::arange(n, n + 3)},
                                 {"mask", torch::tensor({1, 1, 0}) * n},
                                 {"label", torch::tensor(n)}});
  }
};

/// Sample i is a tuple (x = [i, i], y = i, w = 0.5 * i).
struct TupleSamples : Dataset {
  std::size_t size() const override { return 9; }
  Example get(std::size_t i) const override {
    const double v = static_cast<double>(i);
    return Example::of(std::make_tuple(torch::full({2}, v), torch::tensor(static_cast<int64_t>(i)),
                                       torch::tensor(0.5 * v)));
  }
};

/// Sample i is a vector of two tensors of i.
struct VectorSamples : Dataset {
  std::size_t size() const override { return 6; }
  Example get(std::size_t i) const override {
    const double v = static_cast<double>(i);
    return Example::of(std::vector<at::Tensor>{torch::full({3}, v), torch::full({1, 2}, -v)});
  }
};

/// Every third sample has a different image size.
struct RaggedImages : Dataset {
  std::size_t size() const override { return 8; }
  Example get(std::size_t i) const override {
    const int64_t side = i % 3 == 2 ? 28 : 32;
    return {torch::zeros({3, side, side}), torch::tensor(static_cast<int64_t>(i))};
  }
};

}  // namespace

TEST(Collate, ExamplesStackDataAndTarget) {
  std::vector<Example> examples{{torch::ones({2}), torch::tensor(1)},
                                {torch::zeros({2}), torch::tensor(2)}};
  Batch batch = default_collate(examples);
  EXPECT_TRUE(torch::equal(batch.data, torch::tensor({{1.0f, 1.0f}, {0.0f, 0.0f}})));
  EXPECT_TRUE(torch::equal(batch.target, torch::tensor({1, 2})));
  EXPECT_TRUE(batch.fields.is_none());
}

TEST(Collate, MapsCollateKeyByKey) {
  DataLoader loader(MapSamples{}, {.batch_size = 4});
  std::vector<int64_t> labels;
  for (auto& batch : loader) {
    const auto ids = batch.field("ids");
    const auto label = batch.field("label");
    ASSERT_EQ(ids.dim(), 2);
    EXPECT_EQ(ids.size(1), 3);
    EXPECT_TRUE(torch::equal(ids.select(1, 0), label));
    EXPECT_TRUE(torch::equal(batch.field("mask").select(1, 1), label));
    auto as_map = batch.as<TensorMap>();
    EXPECT_EQ(as_map.size(), 3u);
    EXPECT_TRUE(torch::equal(as_map.at("ids"), ids));
    for (int64_t i = 0; i < label.size(0); ++i) labels.push_back(label[i].item<int64_t>());
  }
  EXPECT_EQ(labels, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(Collate, TuplesCollatePositionByPosition) {
  DataLoader loader(TupleSamples{}, {.batch_size = 3, .num_workers = 2});
  int64_t first = 0;
  for (auto& batch : loader) {
    auto [x, y, w] = batch.as<Triple>();
    EXPECT_EQ(x.sizes(), (std::vector<int64_t>{3, 2}));
    EXPECT_TRUE(torch::equal(y, torch::arange(first, first + 3)));
    EXPECT_TRUE(torch::allclose(w, 0.5 * y.to(torch::kFloat)));
    EXPECT_TRUE(torch::equal(batch.field(1), y));
    first += 3;
  }
  EXPECT_EQ(first, 9);
}

TEST(Collate, VectorsCollateElementByElement) {
  DataLoader loader(VectorSamples{}, {.batch_size = 2});
  auto batch = *loader.begin();
  auto parts = batch.as<std::vector<at::Tensor>>();
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(parts[1].sizes(), (std::vector<int64_t>{2, 1, 2}));
  EXPECT_TRUE(torch::equal(parts[1][1], torch::full({1, 2}, -1.0f)));
}

TEST(Collate, NumbersBecomeTensorsAndStringsStayAList) {
  std::vector<Value> samples{
      Value::dict(
          {{"n", 1}, {"x", 0.5}, {"ok", true}, {"name", "a"}, {"nested", Value::tuple({2})}}),
      Value::dict(
          {{"n", 2}, {"x", 1.5}, {"ok", false}, {"name", "b"}, {"nested", Value::tuple({3})}})};
  Value batch = collate_values(samples);
  EXPECT_TRUE(torch::equal(batch.at("n").to_tensor(), torch::tensor({1, 2}, torch::kLong)));
  EXPECT_EQ(batch.at("x").to_tensor().scalar_type(), torch::kDouble);
  EXPECT_EQ(batch.at("ok").to_tensor().scalar_type(), torch::kBool);
  EXPECT_EQ(batch.at("name"), Value::list({"a", "b"}));
  EXPECT_TRUE(torch::equal(batch.at("nested").elements()[0].to_tensor(), torch::tensor({2, 3})));
}

TEST(Collate, StructureMismatchesNameTheElement) {
  std::vector<Value> keys{Value::dict({{"a", 1}}), Value::dict({{"b", 1}})};
  EXPECT_THROW_WITH(collate_values(keys), std::invalid_argument, "'a'", "element 1");
  std::vector<Value> lengths{Value::list({1, 2}), Value::list({1})};
  EXPECT_THROW_WITH(collate_values(lengths), std::invalid_argument, "2 items", "1 in element 1");
  std::vector<Value> kinds{Value(torch::ones({1})), Value("text")};
  EXPECT_THROW_WITH(collate_values(kinds), std::invalid_argument, "Tensor", "str", "element 1");
  std::vector<Example> mixed{Example(torch::ones({1}), torch::ones({1})),
                             Example(torch::ones({1}))};
  EXPECT_THROW_WITH(default_collate(mixed), std::invalid_argument, "`target`", "element 1");
}

TEST(Collate, ShapeErrorNamesTheSamplesWithoutABacktrace) {
  DataLoader loader(RaggedImages{}, {.batch_size = 4});
  try {
    for (auto& batch : loader) (void)batch;
    ADD_FAILURE() << "ragged images must not collate";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("collating batch 0 (samples [0, 1, 2, 3])"), std::string::npos)
        << message;
    EXPECT_NE(message.find("[3, 32, 32] in element 0"), std::string::npos) << message;
    EXPECT_NE(message.find("[3, 28, 28] in element 2"), std::string::npos) << message;
    EXPECT_EQ(message.find("Exception raised from"), std::string::npos) << message;
    EXPECT_EQ(message.find("frame #"), std::string::npos) << message;
  }
}

TEST(Collate, LibTorchErrorsInACollateFnLoseTheirBacktrace) {
  // A user's collate_fn that calls torch::stack on mismatched shapes raises c10::Error.
  DataLoader loader(RaggedImages{}, {.batch_size = 4, .collate_fn = [](std::vector<Example>& ex) {
                                       std::vector<at::Tensor> parts;
                                       for (auto& e : ex) parts.push_back(e.data);
                                       return Batch(torch::stack(parts));
                                     }});
  try {
    for (auto& batch : loader) (void)batch;
    ADD_FAILURE() << "torch::stack must fail";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("collating batch 0 (samples [0, 1, 2, 3])"), std::string::npos)
        << message;
    EXPECT_NE(message.find("stack expects each tensor to be equal size"), std::string::npos)
        << message;
    EXPECT_EQ(message.find("Exception raised from"), std::string::npos) << message;
  }
}

TEST(Collate, AsAndFieldExplainMismatches) {
  DataLoader loader(TupleSamples{}, {.batch_size = 3});
  auto batch = *loader.begin();
  using Pair = std::tuple<at::Tensor, at::Tensor>;
  EXPECT_THROW_WITH(batch.as<Pair>(), std::invalid_argument, "Batch::as", "a tuple of 2 items",
                    "tuple of 3 items");
  EXPECT_THROW_WITH(batch.field("ids"), std::invalid_argument, "not a map");
  EXPECT_THROW_WITH(batch.field(3), std::out_of_range, "out of range for 3 fields");
  DataLoader maps(MapSamples{}, {.batch_size = 2});
  auto map_batch = *maps.begin();
  EXPECT_THROW_WITH(map_batch.field("idz"), std::out_of_range, "'ids'", "'label'");
}

TEST(MoveToDevice, EveryTensorOfACollectionMoves) {
  const c10::Device meta(c10::kMeta);
  Value tree = Value::dict({{"a", torch::ones({2})},
                            {"b", Value::list({torch::zeros({1}), 3, "x"})},
                            {"c", Value::tuple({torch::ones({1})})}});
  Value moved = move_to_device(tree, meta);
  EXPECT_TRUE(moved.at("a").to_tensor().is_meta());
  EXPECT_TRUE(moved.at("b").elements()[0].to_tensor().is_meta());
  EXPECT_EQ(moved.at("b").elements()[1].to_int(), 3);
  EXPECT_EQ(moved.at("b").elements()[2].to_string(), "x");
  EXPECT_EQ(moved.at("c").kind(), Value::Kind::Tuple);
  EXPECT_TRUE(moved.at("c").elements()[0].to_tensor().is_meta());
  EXPECT_FALSE(tree.at("a").to_tensor().is_meta()) << "the input is left alone";
}

TEST(MoveToDevice, FabricDataLoaderMovesFieldsDataAndTarget) {
  cppfabric::FabricDataLoader on_meta(DataLoader(MapSamples{}, {.batch_size = 5}),
                                      c10::Device(c10::kMeta));
  int batches = 0;
  for (auto& batch : on_meta) {
    EXPECT_TRUE(batch.field("ids").is_meta());
    EXPECT_TRUE(batch.field("label").is_meta());
    ++batches;
  }
  EXPECT_EQ(batches, 2);
  cppfabric::FabricDataLoader pairs(DataLoader(RaggedImages{}, {.batch_size = 2}),
                                    c10::Device(c10::kMeta));
  auto first = *pairs.begin();
  EXPECT_TRUE(first.data.is_meta());
  EXPECT_TRUE(first.target.is_meta());
}

TEST(MoveToDevice, FabricToDeviceTakesValuesAndBatches) {
  cppfabric::Fabric fabric({.accelerator = "cpu", .devices = 1});
  Value tree = Value::list({torch::ones({1}), 2});
  EXPECT_TRUE(fabric.to_device(tree).elements()[0].to_tensor().device().is_cpu());
  Batch batch(torch::ones({2}));
  batch.fields = Value::dict({{"x", torch::ones({1})}});
  auto moved = fabric.to_device(batch);
  EXPECT_TRUE(moved.data.device().is_cpu());
  EXPECT_TRUE(moved.field("x").device().is_cpu());
}

// ------------------------------------------------------------------ from_torch

namespace {

/// A LibTorch dataset as users write them: example i has data [i, i, i, i] and target i.
struct Rows : torch::data::datasets::Dataset<Rows> {
  explicit Rows(int64_t n) : n(n) {}
  torch::data::Example<> get(size_t index) override {
    ++*calls;
    const auto i = static_cast<int64_t>(index);
    return {torch::full({4}, static_cast<float>(i)), torch::tensor(i)};
  }
  std::optional<size_t> size() const override { return static_cast<size_t>(n); }
  int64_t n;
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
};

/// Examples without targets.
struct Inputs : torch::data::datasets::Dataset<Inputs, torch::data::TensorExample> {
  torch::data::TensorExample get(size_t index) override {
    return torch::data::TensorExample(torch::full({2}, static_cast<float>(index)));
  }
  std::optional<size_t> size() const override { return 5; }
};

/// Tuples of three tensors.
struct Triples : torch::data::datasets::Dataset<Triples, Triple> {
  Triple get(size_t index) override {
    const auto i = static_cast<int64_t>(index);
    return {torch::tensor(i), torch::tensor(2 * i), torch::full({2}, static_cast<float>(i))};
  }
  std::optional<size_t> size() const override { return 6; }
};

/// A dataset that cannot be copied (called under a mutex).
struct Unique : torch::data::datasets::Dataset<Unique> {
  Unique() : base(std::make_unique<int64_t>(100)) {}
  torch::data::Example<> get(size_t index) override {
    const auto i = static_cast<int64_t>(index);
    return {torch::full({1}, static_cast<float>(*base + i)), torch::tensor(i)};
  }
  std::optional<size_t> size() const override { return 7; }
  std::unique_ptr<int64_t> base;
};

struct Endless : torch::data::datasets::Dataset<Endless> {
  torch::data::Example<> get(size_t) override { return {}; }
  std::optional<size_t> size() const override { return std::nullopt; }
};

}  // namespace

TEST(FromTorch, DatasetWithTransformsLoadsThroughWorkers) {
  auto normalized = Rows(20).map(torch::data::transforms::Normalize<>(1.0, 2.0));
  auto dataset = from_torch(std::move(normalized));
  EXPECT_EQ(dataset->size(), 20u);
  DataLoader loader(dataset, {.batch_size = 8, .shuffle = true, .num_workers = 3, .seed = 7});
  EXPECT_EQ(loader.size(), 3u);
  std::set<int64_t> seen;
  for (auto& batch : loader) {
    // LibTorch's Normalize treats its input as an image: [4] becomes [1, 1, 4].
    ASSERT_EQ(batch.data.dim(), 4);
    const auto rows = batch.data.flatten(1);
    EXPECT_EQ(rows.size(1), 4);
    // Normalize: (i - 1) / 2 in the first column.
    EXPECT_TRUE(torch::allclose(rows.select(1, 0), (batch.target.to(torch::kFloat) - 1.0f) / 2.0f));
    for (int64_t k = 0; k < batch.target.size(0); ++k) seen.insert(batch.target[k].item<int64_t>());
  }
  EXPECT_EQ(seen.size(), 20u);
}

TEST(FromTorch, EachThreadUsesItsOwnCopyOfACopyableDataset) {
  Rows rows(12);
  auto calls = rows.calls;
  auto adapter = std::make_shared<TorchDataset<Rows>>(rows);
  DataLoader loader(adapter, {.batch_size = 3, .num_workers = 2});
  int batches = 0;
  for (auto& batch : loader) batches += batch.data.defined() ? 1 : 0;
  EXPECT_EQ(batches, 4);
  EXPECT_EQ(calls->load(), 12) << "copies share the counter; each example is read once";
}

TEST(FromTorch, ExamplesWithoutTargetsAndTuples) {
  DataLoader inputs(from_torch(Inputs{}), {.batch_size = 5});
  auto batch = *inputs.begin();
  EXPECT_EQ(batch.data.sizes(), (std::vector<int64_t>{5, 2}));
  EXPECT_FALSE(batch.target.defined());

  DataLoader triples(from_torch(Triples{}), {.batch_size = 3});
  int64_t first = 0;
  for (auto& b : triples) {
    auto [a, twice, row] = b.as<Triple>();
    EXPECT_TRUE(torch::equal(a, torch::arange(first, first + 3)));
    EXPECT_TRUE(torch::equal(twice, 2 * a));
    EXPECT_EQ(row.sizes(), (std::vector<int64_t>{3, 2}));
    first += 3;
  }
  EXPECT_EQ(first, 6);
}

TEST(FromTorch, NonCopyableDatasetsWorkUnderAMutex) {
  DataLoader loader(from_torch(Unique{}), {.batch_size = 7, .num_workers = 2});
  auto batch = *loader.begin();
  EXPECT_TRUE(torch::equal(batch.data.squeeze(1), torch::arange(100, 107).to(torch::kFloat)));
}

TEST(FromTorch, ErrorsNameTheProblem) {
  EXPECT_THROW_WITH(from_torch(Endless{}), std::invalid_argument, "size() is unknown");
  auto dataset = from_torch(Rows(3));
  EXPECT_THROW_WITH(dataset->get(3), std::out_of_range, "index 3 out of range for 3");
}

TEST(FromTorch, SetupDataloadersOnOneDevice) {
  cppfabric::Fabric fabric({.accelerator = "cpu", .devices = 1});
  DataLoader loader(from_torch(Rows(10)), {.batch_size = 4});
  auto train = fabric.setup_dataloaders(loader);
  std::size_t rows = 0;
  for (auto& batch : train) rows += static_cast<std::size_t>(batch.data.size(0));
  EXPECT_EQ(rows, 10u);
}
