// Image transforms (Python's torchvision.transforms), for CIFAR-10-style pipelines.
//
//   namespace T = cppfabric::data::transforms;
//   T::Transform train_tf = T::Compose({T::RandomHorizontalFlip(), T::RandomCrop(32, 4),
//   T::ToTensor(),
//                                       T::Normalize({0.4914, 0.4822, 0.4465}, {0.2470, 0.2435,
//                                       0.2616})});
//   at::Tensor x = train_tf(image);                 // uint8 HWC in, float CHW out
//
// Layout rule: a uint8 tensor is an image as torchvision's PIL/numpy path sees it, H x W x C; any
// other dtype is a tensor image, [..., C,] H x W. ToTensor converts the first into the second.
//
// Randomness: random transforms draw from transforms::random(), a small per-thread stream. The
// DataLoader seeds it for every sample from (its base seed, the pass, the sample index), so a run
// gives the same images whatever num_workers is. Outside a loader, the stream is seeded from
// LibTorch's default generator (Fabric::seed_everything makes it reproducible), or by a
// SampleSeed guard of your own.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <utility>
#include <vector>

namespace cppfabric::data::transforms {

/// Any callable tensor -> tensor.
using Transform = std::function<at::Tensor(const at::Tensor&)>;

/// The random stream random transforms use (xoshiro256**, seeded by splitmix64).
class RandomStream {
 public:
  explicit RandomStream(uint64_t seed = 0) { seed_with(seed); }
  void seed_with(uint64_t seed);
  uint64_t next();
  /// Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  /// Uniform integer in [low, high] (inclusive).
  int64_t randint(int64_t low, int64_t high);

 private:
  uint64_t state_[4] = {};
};

/// This thread's stream for the current sample.
RandomStream& random();

/// Seeds this thread's stream with `seed` while alive; restores the previous stream afterwards.
class SampleSeed {
 public:
  explicit SampleSeed(uint64_t seed);
  ~SampleSeed();
  SampleSeed(const SampleSeed&) = delete;
  SampleSeed& operator=(const SampleSeed&) = delete;

  /// The seed the loader uses for sample `index` in pass `pass` of a loader with `base_seed`.
  static uint64_t for_sample(uint64_t base_seed, int64_t pass, int64_t index);

 private:
  RandomStream previous_;
  bool had_previous_;
};

/// Applies transforms in order.
class Compose {
 public:
  Compose(std::vector<Transform> transforms) : transforms_(std::move(transforms)) {}
  Compose(std::initializer_list<Transform> transforms) : transforms_(transforms) {}
  at::Tensor operator()(const at::Tensor& input) const;

 private:
  std::vector<Transform> transforms_;
};

/// uint8 H x W x C (or H x W) -> float32 C x H x W scaled to [0, 1]. Float tensors pass through.
struct ToTensor {
  at::Tensor operator()(const at::Tensor& input) const;
};

/// (x - mean[c]) / std[c] per channel of a float C x H x W tensor (a new tensor; the input is
/// kept).
class Normalize {
 public:
  Normalize(std::vector<double> mean, std::vector<double> std);
  at::Tensor operator()(const at::Tensor& input) const;
  const std::vector<double>& mean() const { return mean_; }
  const std::vector<double>& std() const { return std_; }

 private:
  std::vector<double> mean_, std_;
};

/// Mirrors left-right with probability p.
class RandomHorizontalFlip {
 public:
  explicit RandomHorizontalFlip(double p = 0.5);
  at::Tensor operator()(const at::Tensor& input) const;
  /// Whether the next image flips: the one draw operator() makes from random().
  bool draw() const;

 private:
  double p_;
};

/// Pads every border by `padding` (with `fill`), then crops a random size x size window.
class RandomCrop {
 public:
  RandomCrop(int64_t size, int64_t padding = 0, double fill = 0.0);
  RandomCrop(std::vector<int64_t> size, int64_t padding = 0, double fill = 0.0);
  at::Tensor operator()(const at::Tensor& input) const;
  /// The window's (top, left) in the padded image for an input of `height` x `width`: the draws
  /// operator() makes from random() (none when the padded image is the crop's size). Throws
  /// std::invalid_argument when the crop is larger than the padded input.
  std::pair<int64_t, int64_t> draw(int64_t height, int64_t width) const;
  int64_t height() const { return height_; }
  int64_t width() const { return width_; }
  int64_t padding() const { return padding_; }
  double fill() const { return fill_; }

 private:
  int64_t height_, width_, padding_;
  double fill_;
};

}  // namespace cppfabric::data::transforms
