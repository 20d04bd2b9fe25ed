// Samplers and the DataLoader's index order against Python's torch.utils.data
// (tests/python/sampler_reference.py computes the expectations with the bootstrapped torch).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/data/dataloader.hpp>
#include <cppfabric/data/sampler.hpp>
#include <map>
#include <sstream>

#include "test_utils.hpp"

using namespace cppfabric::data;

namespace {

/// key -> indices, from the Python script; empty when the venv is missing.
const std::map<std::string, std::vector<int64_t>>& python_reference() {
  static const auto table = [] {
    std::map<std::string, std::vector<int64_t>> out;
    const auto python = cppfabric::testing::venv_python();
    if (!python) return out;
    int status = 0;
    const std::string script =
        std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/sampler_reference.py";
    const std::string text =
        cppfabric::testing::run_command(*python + " -W ignore " + script, &status);
    EXPECT_EQ(status, 0) << text;
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      const auto colon = line.find(" : ");
      if (colon == std::string::npos) continue;
      std::istringstream values(line.substr(colon + 3));
      std::vector<int64_t> indices;
      for (int64_t v; values >> v;) indices.push_back(v);
      out[line.substr(0, colon)] = indices;
    }
    return out;
  }();
  return table;
}

#define REQUIRE_REFERENCE() \
  if (python_reference().empty()) GTEST_SKIP() << "bootstrapped venv missing"

std::vector<int64_t> expected(const std::string& key) {
  const auto& table = python_reference();
  auto it = table.find(key);
  if (it == table.end()) {
    ADD_FAILURE() << "Python printed no case '" << key << "'";
    return {};
  }
  return it->second;
}

/// A dataset whose example i is the scalar i (to read the loader's order back).
struct IndexDataset : Dataset {
  explicit IndexDataset(std::size_t n) : n(n) {}
  std::size_t size() const override { return n; }
  Example get(std::size_t i) const override { return {torch::tensor(static_cast<int64_t>(i)), {}}; }
  std::size_t n;
};

std::vector<int64_t> drain(DataLoader& loader, int passes) {
  std::vector<int64_t> out;
  for (int p = 0; p < passes; ++p)
    for (auto& batch : loader)
      for (int64_t i = 0; i < batch.data.numel(); ++i) out.push_back(batch.data[i].item<int64_t>());
  return out;
}

}  // namespace

TEST(DataSampler, DistributedSamplerMatchesPythonOverGrid) {
  REQUIRE_REFERENCE();
  int cases = 0;
  for (std::size_t n : {0, 1, 5, 10, 17})
    for (int replicas : {1, 2, 3, 4})
      for (int rank = 0; rank < replicas; ++rank)
        for (bool shuffle : {false, true})
          for (bool drop_last : {false, true})
            for (uint64_t seed : {0, 42})
              for (int64_t epoch : {0, 3}) {
                DistributedSampler sampler(n, {.num_replicas = replicas,
                                               .rank = rank,
                                               .shuffle = shuffle,
                                               .seed = seed,
                                               .drop_last = drop_last});
                sampler.set_epoch(epoch);
                const std::string key = fmt::format("dist {} {} {} {} {} {} {}", n, replicas, rank,
                                                    int(shuffle), int(drop_last), seed, epoch);
                const auto want = expected(key);
                EXPECT_EQ(sampler.indices(), want) << key;
                EXPECT_EQ(sampler.size(), want.size()) << key;
                ++cases;
              }
  EXPECT_GT(cases, 300);
}

TEST(DataSampler, DistributedSamplerRejectsBadRank) {
  EXPECT_THROW_WITH(DistributedSampler(10, {.num_replicas = 2, .rank = 2}), std::invalid_argument,
                    "invalid rank 2", "[0, 1]");
  EXPECT_THROW_WITH(DistributedSampler(10, {.num_replicas = 0, .rank = 0}), std::invalid_argument,
                    "num_replicas");
}

TEST(DataSampler, DistributedSamplerEpochChangesOrder) {
  DistributedSampler sampler(100, {.num_replicas = 2, .rank = 0, .shuffle = true});
  const auto first = sampler.indices();
  EXPECT_EQ(sampler.indices(), first);  // same epoch, same order
  sampler.set_epoch(1);
  EXPECT_NE(sampler.indices(), first);
}

TEST(DataSampler, RandomSamplerMatchesPython) {
  REQUIRE_REFERENCE();
  for (std::size_t n : {1, 7, 100})
    for (uint64_t seed : {0, 5}) {
      RandomSampler seeded(n, seed);
      std::vector<int64_t> got;
      for (int p = 0; p < 3; ++p) {
        auto part = seeded.indices();
        got.insert(got.end(), part.begin(), part.end());
      }
      EXPECT_EQ(got, expected(fmt::format("random_gen {} {} 3", n, seed))) << n << " " << seed;

      torch::manual_seed(seed);
      RandomSampler global(n);
      got = global.indices();
      auto second = global.indices();
      got.insert(got.end(), second.begin(), second.end());
      EXPECT_EQ(got, expected(fmt::format("random_global {} {} 2", n, seed))) << n << " " << seed;

      RandomSampler replacement(n, {.replacement = true,
                                    .num_samples = 70,
                                    .generator = at::make_generator<at::CPUGeneratorImpl>(seed)});
      EXPECT_EQ(replacement.indices(),
                expected(fmt::format("random_replacement {} 70 {}", n, seed)));
    }
}

TEST(DataSampler, LoaderShuffleOrderMatchesPython) {
  REQUIRE_REFERENCE();
  for (std::size_t n : {10, 33})
    for (std::size_t batch : {1, 4})
      for (bool drop_last : {false, true})
        for (uint64_t seed : {0, 7}) {
          DataLoader loader(
              IndexDataset(n),
              {.batch_size = batch, .shuffle = true, .drop_last = drop_last, .seed = seed});
          EXPECT_EQ(drain(loader, 2), expected(fmt::format("loader_gen {} {} {} {} 2", n, batch,
                                                           int(drop_last), seed)));
        }
  for (std::size_t n : {10, 33})
    for (uint64_t seed : {0, 7}) {
      torch::manual_seed(seed);
      DataLoader loader(IndexDataset(n), {.batch_size = 4, .shuffle = true});
      EXPECT_EQ(drain(loader, 2), expected(fmt::format("loader_global {} 4 {} 2", n, seed)));
    }
}

TEST(DataSampler, BatchSamplerSizes) {
  auto seq = std::make_shared<SequentialSampler>(10);
  BatchSampler keep(seq, 4, false), drop(seq, 4, true);
  EXPECT_EQ(keep.size(), 3u);
  EXPECT_EQ(drop.size(), 2u);
  auto batches = keep.batches();
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches.back(), (std::vector<int64_t>{8, 9}));
  EXPECT_EQ(drop.batches().size(), 2u);
  EXPECT_THROW_WITH(BatchSampler(seq, 0, false), std::invalid_argument, "batch_size");
}
