// DeviceImages: per-batch augmentation on the batch's device gives exactly the batches of the CPU
// transforms (same loader options and seed), through workers, several passes and a
// DistributedSampler; the augmentation really happens; bad inputs are clear errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>

namespace {

namespace data = cppfabric::data;
namespace T = cppfabric::data::transforms;

const std::vector<double> kMean{0.4914, 0.4822, 0.4465}, kStd{0.2470, 0.2435, 0.2616};

std::vector<data::Batch> collect(data::DataLoader& loader, int passes) {
  std::vector<data::Batch> out;
  for (int pass = 0; pass < passes; ++pass) {
    for (auto& batch : loader) out.push_back(batch);
  }
  return out;
}

void expect_same_batches(const std::vector<data::Batch>& cpu,
                         const std::vector<data::Batch>& device) {
  ASSERT_EQ(cpu.size(), device.size());
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    SCOPED_TRACE("batch " + std::to_string(i));
    EXPECT_EQ(cpu[i].data.sizes(), device[i].data.sizes());
    EXPECT_TRUE(torch::equal(cpu[i].data, device[i].data));  // bit for bit
    EXPECT_TRUE(torch::equal(cpu[i].target, device[i].target));
  }
}

// The CIFAR-10 training pipeline twice over the same 300 images: the CPU transforms per sample,
// and DeviceImages on `device`, each in a shuffled loader (same seed) with `workers` workers.
struct TrainingPipelines {
  data::datasets::SyntheticCIFAR10 raw{300, /*train=*/true};
  data::datasets::SyntheticCIFAR10 transformed{
      300, /*train=*/true,
      T::Compose({T::RandomHorizontalFlip(), T::RandomCrop(32, 4), T::ToTensor(),
                  T::Normalize(kMean, kStd)})};
  data::DeviceImages images;

  explicit TrainingPipelines(c10::Device device)
      : images(raw.images(), raw.labels(), device,
               {.flip = T::RandomHorizontalFlip(),
                .crop = T::RandomCrop(32, 4),
                .normalize = T::Normalize(kMean, kStd)}) {}
  data::DataLoader cpu_loader(int workers) const {
    return data::DataLoader(transformed,
                            {.batch_size = 32, .shuffle = true, .num_workers = workers, .seed = 7});
  }
  data::DataLoader device_loader(int workers, bool pin_memory = false) const {
    return data::DataLoader(images.dataset(), {.batch_size = 32,
                                               .shuffle = true,
                                               .num_workers = workers,
                                               .collate_fn = images.collate(),
                                               .pin_memory = pin_memory,
                                               .seed = 7});
  }
};

TEST(DeviceImages, SameBatchesAsTheCpuTransforms) {
  const TrainingPipelines pipelines(torch::kCPU);
  const auto& raw = pipelines.raw;
  for (int workers : {0, 2}) {
    SCOPED_TRACE("num_workers " + std::to_string(workers));
    auto cpu = pipelines.cpu_loader(workers);
    auto device = pipelines.device_loader(workers);
    expect_same_batches(collect(cpu, 3), collect(device, 3));
  }
  // A rank's shard under a DistributedSampler, and other crop geometry without normalize.
  const data::datasets::SyntheticCIFAR10 cropped(
      300, true, T::Compose({T::RandomCrop(std::vector<int64_t>{28, 30}, 2, 17.0), T::ToTensor()}));
  data::DeviceImages small(raw.images(), raw.labels(), torch::kCPU,
                           {.crop = T::RandomCrop(std::vector<int64_t>{28, 30}, 2, 17.0)});
  auto sampler = [] {
    return std::make_shared<data::DistributedSampler>(
        300, data::DistributedSampler::Options{.num_replicas = 3, .rank = 1});
  };
  data::DataLoader cpu(cropped, {.batch_size = 16, .sampler = sampler(), .seed = 3});
  data::DataLoader device(
      small.dataset(),
      {.batch_size = 16, .sampler = sampler(), .collate_fn = small.collate(), .seed = 3});
  expect_same_batches(collect(cpu, 2), collect(device, 2));
}

// On a GPU (skipped without one), through a loader that pins memory (only host tensors are
// pinned: the batches are on the device) and through workers: the CPU transforms' batches.
TEST(DeviceImagesGpu, SameBatchesAsTheCpuTransformsWithPinMemory) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const TrainingPipelines pipelines(torch::kCUDA);
  for (int workers : {0, 2}) {
    SCOPED_TRACE("num_workers " + std::to_string(workers));
    auto cpu = pipelines.cpu_loader(workers);
    auto device = pipelines.device_loader(workers, /*pin_memory=*/true);
    const auto expected = collect(cpu, 2), got = collect(device, 2);
    ASSERT_EQ(expected.size(), got.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(got[i].data.is_cuda());
      const auto data = got[i].data.cpu();
      EXPECT_LE((data - expected[i].data).abs().max().item<double>(), 1e-6) << "batch " << i;
      EXPECT_TRUE(torch::equal(got[i].target.cpu(), expected[i].target)) << "batch " << i;
    }
  }
}

TEST(DeviceImages, AugmentsAndKeepsLabels) {
  const data::datasets::SyntheticCIFAR10 raw(64, true);
  data::DeviceImages plain(raw.images(), raw.labels(), torch::kCPU);
  data::DeviceImages augmented(raw.images(), raw.labels(), torch::kCPU,
                               {.flip = T::RandomHorizontalFlip(), .crop = T::RandomCrop(32, 4)});
  data::DataLoader a(plain.dataset(), {.batch_size = 64, .collate_fn = plain.collate()});
  data::DataLoader b(augmented.dataset(), {.batch_size = 64, .collate_fn = augmented.collate()});
  const auto x = collect(a, 1), y = collect(b, 1);
  ASSERT_EQ(x.size(), 1u);
  // Without augmentation: ToTensor of the stored images, in order.
  EXPECT_TRUE(torch::equal(x[0].data,
                           raw.images().permute({0, 3, 1, 2}).to(torch::kFloat) * (1.0f / 255.0f)));
  EXPECT_TRUE(torch::equal(x[0].target, raw.labels()));
  EXPECT_TRUE(torch::equal(y[0].target, raw.labels()));
  int64_t changed = 0;
  for (int64_t i = 0; i < 64; ++i) changed += torch::equal(x[0].data[i], y[0].data[i]) ? 0 : 1;
  EXPECT_GT(changed, 48);  // almost every image flipped or shifted
}

TEST(DeviceImages, ClearErrors) {
  const auto images = torch::zeros({4, 32, 32, 3}, torch::kByte);
  const auto labels = torch::zeros({4}, torch::kLong);
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] {
              data::DeviceImages(images.to(torch::kFloat), labels, torch::kCPU);
            }).find("uint8 [N, H, W, C]"),
            std::string::npos);
  EXPECT_NE(message([&] {
              data::DeviceImages(images, torch::zeros({3}), torch::kCPU);
            }).find("shape [4]"),
            std::string::npos);
  EXPECT_NE(message([&] {
              data::DeviceImages(images, labels, torch::kCPU,
                                 {.normalize = T::Normalize({0.5, 0.5}, {0.2, 0.2})});
            }).find("2 mean/std values for images with 3 channels"),
            std::string::npos);
  EXPECT_NE(message([&] {
              data::DeviceImages(images, labels, torch::kCPU, {.crop = T::RandomCrop(40)});
            }).find("larger than"),
            std::string::npos);
  data::DeviceImages ok(images, labels, torch::kCPU);
  std::vector<data::Example> foreign{data::Example(torch::zeros({3}))};
  EXPECT_THROW(ok.collate()(foreign), std::invalid_argument);
}

}  // namespace
