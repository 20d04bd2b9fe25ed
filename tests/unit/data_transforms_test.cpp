// Transforms: shapes, values against ATen reference ops, determinism under SampleSeed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/data/transforms.hpp>

#include "test_utils.hpp"

namespace T = cppfabric::data::transforms;

TEST(DataTransforms, ToTensorIsHwcToChwOver255) {
  auto image = torch::randint(0, 256, {5, 7, 3}, torch::kByte);
  auto out = T::ToTensor()(image);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3, 5, 7}));
  EXPECT_EQ(out.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::allclose(out, image.permute({2, 0, 1}).to(torch::kFloat) / 255.0));
  auto gray = torch::randint(0, 256, {4, 6}, torch::kByte);
  EXPECT_EQ(T::ToTensor()(gray).sizes(), (std::vector<int64_t>{1, 4, 6}));
  EXPECT_THROW_WITH(T::ToTensor()(torch::zeros({2, 2}, torch::kInt)), std::invalid_argument,
                    "uint8");
}

TEST(DataTransforms, NormalizePerChannel) {
  auto x = torch::rand({3, 4, 4});
  T::Normalize normalize({0.1, 0.2, 0.3}, {0.5, 0.25, 2.0});
  auto mean = torch::tensor({0.1, 0.2, 0.3}).view({3, 1, 1});
  auto stdv = torch::tensor({0.5, 0.25, 2.0}).view({3, 1, 1});
  EXPECT_TRUE(torch::allclose(normalize(x), (x - mean) / stdv, 1e-5, 1e-6));
  auto batch = torch::rand({2, 3, 4, 4});
  EXPECT_TRUE(torch::allclose(normalize(batch), (batch - mean) / stdv, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(normalize(x.to(torch::kDouble)),
                              ((x - mean) / stdv).to(torch::kDouble), 1e-5, 1e-6));
  EXPECT_THROW_WITH(T::Normalize({0.1}, {0.0}), std::invalid_argument, "zero");
  EXPECT_THROW_WITH(T::Normalize({0.1, 0.2}, {1.0, 1.0})(x), std::invalid_argument, "3 channels");
  EXPECT_THROW_WITH(normalize(torch::zeros({4, 4, 3}, torch::kByte)), std::invalid_argument,
                    "ToTensor");
}

TEST(DataTransforms, FlipMirrorsWidthInBothLayouts) {
  auto hwc = torch::randint(0, 256, {4, 5, 3}, torch::kByte);
  auto chw = torch::rand({3, 4, 5});
  T::RandomHorizontalFlip always(1.0), never(0.0);
  EXPECT_TRUE(torch::equal(always(hwc), hwc.flip({1})));
  EXPECT_TRUE(torch::equal(always(chw), chw.flip({2})));
  EXPECT_TRUE(torch::equal(never(chw), chw));
  EXPECT_THROW_WITH(T::RandomHorizontalFlip(1.5), std::invalid_argument, "1.5");
}

TEST(DataTransforms, CropIsAWindowOfThePaddedImage) {
  auto chw = torch::rand({3, 6, 6}) + 1.0;  // never zero, so padding is recognisable
  auto hwc = torch::randint(1, 256, {6, 6, 3}, torch::kByte);
  T::RandomCrop crop(6, 2);
  auto padded_chw = torch::constant_pad_nd(chw, {2, 2, 2, 2}, 0);
  auto padded_hwc =
      torch::constant_pad_nd(hwc.permute({2, 0, 1}), {2, 2, 2, 2}, 0).permute({1, 2, 0});
  bool saw_shift = false;
  for (int i = 0; i < 50; ++i) {
    T::SampleSeed seed(i);
    auto out = crop(chw);
    ASSERT_EQ(out.sizes(), chw.sizes());
    bool found = false;
    for (int top = 0; top <= 4 && !found; ++top)
      for (int left = 0; left <= 4 && !found; ++left)
        found = torch::equal(out, padded_chw.narrow(1, top, 6).narrow(2, left, 6));
    EXPECT_TRUE(found) << "seed " << i;
    saw_shift = saw_shift || !torch::equal(out, chw);
    auto out_hwc = crop(hwc);
    ASSERT_EQ(out_hwc.sizes(), hwc.sizes());
    found = false;
    for (int top = 0; top <= 4 && !found; ++top)
      for (int left = 0; left <= 4 && !found; ++left)
        found = torch::equal(out_hwc, padded_hwc.narrow(0, top, 6).narrow(1, left, 6));
    EXPECT_TRUE(found) << "seed " << i;
  }
  EXPECT_TRUE(saw_shift);
  EXPECT_EQ(T::RandomCrop(4)(chw).sizes(), (std::vector<int64_t>{3, 4, 4}));
  EXPECT_THROW_WITH(T::RandomCrop(9)(chw), std::invalid_argument, "larger");
}

TEST(DataTransforms, SameSeedSameResult) {
  T::Compose pipeline({T::RandomHorizontalFlip(), T::RandomCrop(32, 4), T::ToTensor(),
                       T::Normalize({0.4914, 0.4822, 0.4465}, {0.2470, 0.2435, 0.2616})});
  auto image = torch::randint(0, 256, {32, 32, 3}, torch::kByte);
  at::Tensor a, b, c;
  {
    T::SampleSeed seed(T::SampleSeed::for_sample(1, 0, 17));
    a = pipeline(image);
  }
  {
    T::SampleSeed seed(T::SampleSeed::for_sample(1, 0, 17));
    b = pipeline(image);
  }
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{3, 32, 32}));
  EXPECT_TRUE(torch::equal(a, b));
  // Different samples draw differently (at least one of several differs).
  bool differs = false;
  for (int64_t index = 18; index < 28 && !differs; ++index) {
    T::SampleSeed seed(T::SampleSeed::for_sample(1, 0, index));
    c = pipeline(image);
    differs = !torch::equal(a, c);
  }
  EXPECT_TRUE(differs);
}

TEST(DataTransforms, RandomStreamIsUniformEnough) {
  T::RandomStream stream(7);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 5000; ++i) ++counts[static_cast<std::size_t>(stream.randint(0, 4))];
  for (int c : counts) EXPECT_GT(c, 850);
  double sum = 0;
  for (int i = 0; i < 10000; ++i) sum += stream.uniform();
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
}
