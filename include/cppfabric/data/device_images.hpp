// DeviceImages: a whole image dataset kept in device memory as uint8, augmented per batch on the
// device (GPU-resident data). The CPU transforms run per sample in loader threads and then copy
// every batch to the GPU; when the dataset fits in device memory (CIFAR-10 is 150 MiB), this
// uploads it once and does flip, crop, to-float and normalize for a whole batch in a few kernels.
//
//   namespace T = cppfabric::data::transforms;
//   cppfabric::data::datasets::CIFAR10 cifar("data", /*train=*/true);    // no transform
//   cppfabric::data::DeviceImages images(cifar.images(), cifar.labels(), fabric.device(),
//                                        {.flip = T::RandomHorizontalFlip(),
//                                         .crop = T::RandomCrop(32, 4),
//                                         .normalize = T::Normalize(mean, stdev)});
//   cppfabric::data::DataLoader loader(images.dataset(),
//                                      {.batch_size = 128, .shuffle = true,
//                                       .collate_fn = images.collate()});
//   auto train = fabric.setup_dataloaders(loader);     // samplers, DDP shards, as usual
//   for (auto& batch : train) { batch.data; batch.target; }   // already on the device
//
// Same semantics as the CPU transforms, bit for bit: each sample's flip and crop offsets are
// drawn on the host from the same per-sample stream the loader seeds for the CPU transforms
// (RandomHorizontalFlip::draw, RandomCrop::draw), so a loader with the same options and seed gives
// exactly the batches of `Compose({flip, crop, ToTensor(), normalize})` (tests compare them on the
// CPU). The order is fixed: flip, crop (padding filled with `fill`), ToTensor's scaling to [0, 1]
// in float32 with C x H x W layout, normalize; leave a step unset to skip it.
//
// Use num_workers = 0 and pin_memory = false with a CUDA device (the batch is built on the device;
// threads would only contend for it). Works on any device; on the CPU it is a test vehicle.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "cppfabric/data/dataset.hpp"
#include "cppfabric/data/transforms.hpp"

namespace cppfabric::data {

/// The per-batch augmentation, in this order; unset steps are skipped.
struct DeviceAugment {
  std::optional<transforms::RandomHorizontalFlip> flip = std::nullopt;
  std::optional<transforms::RandomCrop> crop = std::nullopt;
  std::optional<transforms::Normalize> normalize = std::nullopt;
};

class DeviceImages {
 public:
  /// `images`: uint8 [N, H, W, C] (CIFAR10::images()); `labels`: [N] integers. Both are copied to
  /// `device` once. Throws std::invalid_argument naming the shape or dtype that does not fit, or
  /// a normalize whose channel count differs from C.
  DeviceImages(const at::Tensor& images, const at::Tensor& labels, c10::Device device,
               DeviceAugment augment = {});
  ~DeviceImages();
  DeviceImages(const DeviceImages&) = default;
  DeviceImages& operator=(const DeviceImages&) = default;

  /// What the DataLoader samples: per index, the index and its drawn flip and crop (no pixels).
  std::shared_ptr<const Dataset> dataset() const;
  /// Builds a batch from dataset() samples on the device: float32 [B, C, h, w] and labels.
  std::function<Batch(std::vector<Example>&)> collate() const;
  std::size_t size() const;
  c10::Device device() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace cppfabric::data
