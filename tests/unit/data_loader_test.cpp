// DataLoader: worker threads, order, drop_last, errors, early exit, pinned/persistent options.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <cppfabric/data/dataloader.hpp>
#include <cppfabric/data/transforms.hpp>

#include "test_utils.hpp"

using namespace cppfabric::data;
namespace T = cppfabric::data::transforms;

namespace {

/// Example i: a random 8x8x3 uint8 image through a random transform, and target i.
struct RandomImages : Dataset {
  explicit RandomImages(std::size_t n, T::Transform tf = {}) : n(n), tf(std::move(tf)) {
    images = torch::randint(0, 256, {static_cast<int64_t>(n), 8, 8, 3}, torch::kByte);
  }
  std::size_t size() const override { return n; }
  Example get(std::size_t i) const override {
    auto image = images[static_cast<int64_t>(i)];
    return {tf ? tf(image) : image, torch::tensor(static_cast<int64_t>(i))};
  }
  std::size_t n;
  T::Transform tf;
  torch::Tensor images;
};

struct Failing : Dataset {
  std::size_t size() const override { return 40; }
  Example get(std::size_t i) const override {
    if (i == 23) throw std::out_of_range("broken record");
    return {torch::zeros({2}), torch::tensor(static_cast<int64_t>(i))};
  }
};

struct Counting : Dataset {
  explicit Counting(std::size_t n) : n(n) {}
  std::size_t size() const override { return n; }
  Example get(std::size_t i) const override {
    ++*calls;
    return {torch::zeros({4}), torch::tensor(static_cast<int64_t>(i))};
  }
  std::size_t n;
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
};

std::vector<Batch> collect(DataLoader& loader) {
  std::vector<Batch> out;
  for (auto& batch : loader) out.push_back(batch);
  return out;
}

T::Transform augment() {
  return T::Compose({T::RandomHorizontalFlip(), T::RandomCrop(8, 2), T::ToTensor()});
}

}  // namespace

TEST(DataLoader, SameBatchesWithZeroAndFourWorkers) {
  auto dataset = std::make_shared<RandomImages>(103, augment());
  for (bool shuffle : {false, true}) {
    DataLoader serial(dataset, {.batch_size = 8, .shuffle = shuffle, .num_workers = 0, .seed = 3});
    DataLoader threaded(dataset,
                        {.batch_size = 8, .shuffle = shuffle, .num_workers = 4, .seed = 3});
    for (int pass = 0; pass < 2; ++pass) {
      auto a = collect(serial), b = collect(threaded);
      ASSERT_EQ(a.size(), 13u);
      ASSERT_EQ(a.size(), b.size());
      for (std::size_t i = 0; i < a.size(); ++i) {
        EXPECT_TRUE(torch::equal(a[i].target, b[i].target)) << "batch " << i;
        EXPECT_TRUE(torch::equal(a[i].data, b[i].data)) << "batch " << i;
      }
      EXPECT_EQ(a.back().data.size(0), 103 % 8);
      EXPECT_EQ(a[0].data.sizes(), (std::vector<int64_t>{8, 3, 8, 8}));
    }
  }
}

TEST(DataLoader, AugmentationDiffersBetweenPasses) {
  auto dataset = std::make_shared<RandomImages>(16, augment());
  DataLoader loader(dataset, {.batch_size = 16, .num_workers = 2, .seed = 1});
  auto first = collect(loader), second = collect(loader);
  EXPECT_TRUE(torch::equal(first[0].target, second[0].target));
  EXPECT_FALSE(torch::equal(first[0].data, second[0].data));
}

TEST(DataLoader, DropLastAndSize) {
  auto dataset = std::make_shared<RandomImages>(10);
  DataLoader keep(dataset, {.batch_size = 4}), drop(dataset, {.batch_size = 4, .drop_last = true});
  EXPECT_EQ(keep.size(), 3u);
  EXPECT_EQ(drop.size(), 2u);
  EXPECT_EQ(collect(keep).size(), 3u);
  auto dropped = collect(drop);
  ASSERT_EQ(dropped.size(), 2u);
  EXPECT_EQ(dropped[1].target[3].item<int64_t>(), 7);
}

TEST(DataLoader, WorkerExceptionNamesTheSample) {
  for (int workers : {0, 3}) {
    DataLoader loader(Failing{}, {.batch_size = 5, .num_workers = workers});
    int seen = 0;
    EXPECT_THROW_WITH(
        for (auto& batch
             : loader) {
          (void)batch;
          ++seen;
        },
        std::runtime_error, "sample 23", "batch 4", "broken record");
    EXPECT_EQ(seen, 4) << "the batches before the broken one arrive first";
    // The loader is still usable afterwards: a new pass starts cleanly (and fails again).
    EXPECT_THROW_WITH(collect(loader), std::runtime_error, "sample 23");
  }
}

TEST(DataLoader, EarlyBreakAndDestructionDoNotHang) {
  auto dataset = std::make_shared<Counting>(10000);
  for (int round = 0; round < 20; ++round) {
    DataLoader loader(dataset, {.batch_size = 2, .num_workers = 4, .prefetch_factor = 2});
    int n = 0;
    for (auto& batch : loader) {
      (void)batch;
      if (++n == 3) break;
    }
    EXPECT_EQ(n, 3);
  }
  {
    // The loader goes away while an iterator is mid-pass: the iterator keeps what it needs.
    auto loader =
        std::make_unique<DataLoader>(dataset, DataLoaderOptions{.batch_size = 2, .num_workers = 4});
    auto it = loader->begin();
    ++it;
    loader.reset();
    EXPECT_EQ(it->target.size(0), 2);
  }
  {
    auto loader = std::make_unique<DataLoader>(
        dataset, DataLoaderOptions{.batch_size = 2, .num_workers = 4, .persistent_workers = true});
    for (auto& batch : *loader) {
      (void)batch;
      break;
    }
    loader.reset();  // joins the persistent workers
  }
  // Far fewer than the 10000 samples were loaded: workers stopped when the loops ended.
  EXPECT_LT(dataset->calls->load(), 2000);
}

TEST(DataLoader, PrefetchIsBounded) {
  struct Watch : Dataset {
    std::size_t size() const override { return 400; }
    Example get(std::size_t i) const override {
      const int batch = static_cast<int>(i / 4);
      if (batch >= consumed->load() + 3 * 2 + 1)
        ++*violations;  // window: 3 workers * 2, +1 in hand
      return {torch::zeros({1}), torch::tensor(static_cast<int64_t>(i))};
    }
    std::shared_ptr<std::atomic<int>> consumed = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<int>> violations = std::make_shared<std::atomic<int>>(0);
  };
  auto dataset = std::make_shared<Watch>();
  DataLoader loader(dataset, {.batch_size = 4, .num_workers = 3, .prefetch_factor = 2});
  int n = 0;
  for (auto& batch : loader) {
    EXPECT_EQ(batch.target[0].item<int64_t>(), n * 4);
    dataset->consumed->store(++n);
  }
  EXPECT_EQ(n, 100);
  EXPECT_EQ(dataset->violations->load(), 0);
}

TEST(DataLoader, PersistentWorkersServeSeveralPasses) {
  // As Python, persistent workers keep the first pass's base seed; the sampler still draws a new
  // permutation each pass. Two and four persistent workers give the same batches.
  auto dataset = std::make_shared<RandomImages>(50, augment());
  auto options = [](int workers) {
    return DataLoaderOptions{.batch_size = 7,
                             .shuffle = true,
                             .num_workers = workers,
                             .seed = 9,
                             .persistent_workers = true};
  };
  DataLoader two(dataset, options(2)), four(dataset, options(4));
  std::vector<Batch> first;
  for (int pass = 0; pass < 3; ++pass) {
    auto a = collect(two), b = collect(four);
    ASSERT_EQ(a.size(), 8u);
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(torch::equal(a[i].target, b[i].target));
      EXPECT_TRUE(torch::equal(a[i].data, b[i].data));
    }
    if (pass == 0) first = a;
  }
  auto again = collect(two);
  EXPECT_FALSE(torch::equal(again[0].target, first[0].target));
}

TEST(DataLoader, OptionErrorsFollowPython) {
  auto dataset = std::make_shared<RandomImages>(4);
  EXPECT_THROW_WITH(DataLoader(dataset, {.prefetch_factor = 2}), std::invalid_argument,
                    "prefetch_factor", "num_workers > 0");
  EXPECT_THROW_WITH(DataLoader(dataset, {.persistent_workers = true}), std::invalid_argument,
                    "persistent_workers");
  EXPECT_THROW_WITH(DataLoader(dataset, {.num_workers = -1}), std::invalid_argument, "num_workers");
  EXPECT_THROW_WITH(
      DataLoader(dataset, {.shuffle = true, .sampler = std::make_shared<SequentialSampler>(4)}),
      std::invalid_argument, "mutually exclusive");
  EXPECT_THROW_WITH(DataLoader(dataset, {.batch_size = 0}), std::invalid_argument, "batch_size");
}

TEST(DataLoader, PinMemoryWithoutAcceleratorWarnsAndStillLoads) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "covers the no-accelerator path";
  cppfabric::testing::CaptureConsole console;
  DataLoader loader(std::make_shared<RandomImages>(6), {.batch_size = 3, .pin_memory = true});
  EXPECT_FALSE(loader.pin_memory());
  EXPECT_NE(console.text().find("pin_memory"), std::string::npos) << console.text();
  EXPECT_EQ(collect(loader).size(), 2u);
}

TEST(DataLoader, TensorDatasetAndCustomCollate) {
  auto x = torch::arange(20).view({10, 2});
  auto y = torch::arange(10);
  int calls = 0;
  DataLoader loader(TensorDataset(x, y),
                    {.batch_size = 4, .collate_fn = [&](std::vector<Example>& examples) {
                       ++calls;
                       return default_collate(examples);
                     }});
  auto batches = collect(loader);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(calls, 3);
  EXPECT_TRUE(torch::equal(batches[1].data, x.narrow(0, 4, 4)));
  EXPECT_THROW_WITH(TensorDataset(x, torch::arange(3)), std::invalid_argument, "10", "3");
}
