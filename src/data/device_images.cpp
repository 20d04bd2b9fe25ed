#include "cppfabric/data/device_images.hpp"

#include <torch/torch.h>

#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::data {

struct DeviceImages::Impl {
  at::Tensor images;  // uint8 [N, H, W, C] on the device
  at::Tensor labels;  // int64 [N] on the device
  c10::Device device = c10::kCPU;
  DeviceAugment augment;
  at::Tensor mean, inverse_std;  // float32 [1, C, 1, 1] on the device (Normalize's arithmetic)

  // Columns of a sample's row: index, flip (0/1), top, left.
  static constexpr int64_t kColumns = 4;

  Batch collate(std::vector<Example>& examples) const {
    const auto batch = static_cast<int64_t>(examples.size());
    if (batch == 0) throw std::invalid_argument("DeviceImages: collate of an empty batch");
    // Pinned for a CUDA device, so that the copy below does not wait for the GPU to catch up.
    auto rows =
        at::empty({batch, kColumns}, at::TensorOptions(at::kLong).pinned_memory(device.is_cuda()));
    auto* out = rows.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const auto& data = examples[static_cast<std::size_t>(b)].data;
      if (!data.defined() || data.scalar_type() != at::kLong || data.numel() != kColumns) {
        throw std::invalid_argument(
            "DeviceImages: collate() takes the samples of DeviceImages::dataset() only");
      }
      std::copy_n(data.data_ptr<int64_t>(), kColumns, out + b * kColumns);
    }
    const auto params = rows.to(device, /*non_blocking=*/device.is_cuda());
    const auto index = params.select(1, 0);
    auto x = images.index_select(0, index);  // [B, H, W, C]
    if (augment.flip) {
      const auto flip = params.select(1, 1).to(at::kBool).view({batch, 1, 1, 1});
      x = at::where(flip, x.flip({2}), x);
    }
    if (augment.crop) {
      const auto& crop = *augment.crop;
      if (const int64_t pad = crop.padding(); pad > 0) {
        x = at::constant_pad_nd(x.permute({0, 3, 1, 2}), {pad, pad, pad, pad}, crop.fill())
                .permute({0, 2, 3, 1});
      }
      const auto options = at::TensorOptions(at::kLong).device(device);
      const auto rows_of = params.select(1, 2).unsqueeze(1) + at::arange(crop.height(), options);
      const auto cols_of = params.select(1, 3).unsqueeze(1) + at::arange(crop.width(), options);
      const auto which = at::arange(batch, options).view({batch, 1, 1});
      x = x.index({which, rows_of.unsqueeze(2), cols_of.unsqueeze(1)});  // [B, h, w, C]
    }
    // ToTensor: C x H x W, float32, times 1/255 (the CPU transform's float arithmetic).
    auto data = x.permute({0, 3, 1, 2}).to(at::kFloat).mul_(1.0f / 255.0f);
    if (augment.normalize) data = data.sub_(mean).mul_(inverse_std);
    return Batch(data.contiguous(), labels.index_select(0, index));
  }
};

namespace {

// A sample: its index and the flip and crop drawn for it from the loader's per-sample stream, in
// the order the CPU transforms draw them.
class DrawDataset : public Dataset {
 public:
  explicit DrawDataset(std::shared_ptr<const DeviceImages::Impl> impl) : impl_(std::move(impl)) {}
  std::size_t size() const override { return static_cast<std::size_t>(impl_->images.size(0)); }
  Example get(std::size_t index) const override {
    const auto& a = impl_->augment;
    int64_t flip = 0, top = 0, left = 0;
    if (a.flip) flip = a.flip->draw() ? 1 : 0;
    if (a.crop) std::tie(top, left) = a.crop->draw(impl_->images.size(1), impl_->images.size(2));
    auto row = at::empty({DeviceImages::Impl::kColumns}, at::kLong);
    auto* p = row.data_ptr<int64_t>();
    p[0] = static_cast<int64_t>(index);
    p[1] = flip;
    p[2] = top;
    p[3] = left;
    return Example(row);
  }

 private:
  std::shared_ptr<const DeviceImages::Impl> impl_;
};

}  // namespace

DeviceImages::DeviceImages(const at::Tensor& images, const at::Tensor& labels, c10::Device device,
                           DeviceAugment augment) {
  if (!images.defined() || images.scalar_type() != at::kByte || images.dim() != 4) {
    throw std::invalid_argument(fmt::format(
        "DeviceImages: images must be uint8 [N, H, W, C] (CIFAR10::images()), got {}",
        images.defined() ? fmt::format("{} with shape [{}]", c10::toString(images.scalar_type()),
                                       fmt::join(images.sizes(), ", "))
                         : std::string("an undefined tensor")));
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0) ||
      !at::isIntegralType(labels.scalar_type(), /*includeBool=*/false)) {
    throw std::invalid_argument(fmt::format(
        "DeviceImages: labels must be integers of shape [{}] (one per image), got {}",
        images.size(0),
        labels.defined() ? fmt::format("{} with shape [{}]", c10::toString(labels.scalar_type()),
                                       fmt::join(labels.sizes(), ", "))
                         : std::string("an undefined tensor")));
  }
  const int64_t channels = images.size(3);
  if (augment.crop) augment.crop->draw(images.size(1), images.size(2));  // size check only
  auto impl = std::make_shared<Impl>();
  if (augment.normalize) {
    const auto& m = augment.normalize->mean();
    const auto& s = augment.normalize->std();
    if (m.size() != 1 && static_cast<int64_t>(m.size()) != channels) {
      throw std::invalid_argument(
          fmt::format("DeviceImages: Normalize has {} mean/std values for images with {} channels",
                      m.size(), channels));
    }
    std::vector<float> mean(channels), inverse(channels);
    for (int64_t c = 0; c < channels; ++c) {
      const auto i = m.size() == 1 ? 0 : static_cast<std::size_t>(c);
      mean[c] = static_cast<float>(m[i]);
      inverse[c] = static_cast<float>(1.0 / s[i]);
    }
    const auto options = at::TensorOptions(at::kFloat);
    impl->mean = at::tensor(mean, options).view({1, channels, 1, 1}).to(device);
    impl->inverse_std = at::tensor(inverse, options).view({1, channels, 1, 1}).to(device);
  }
  impl->images = images.contiguous().to(device);
  impl->labels = labels.to(at::kLong).to(device);
  impl->device = device;
  impl->augment = std::move(augment);
  impl_ = std::move(impl);
}

DeviceImages::~DeviceImages() = default;

std::shared_ptr<const Dataset> DeviceImages::dataset() const {
  return std::make_shared<DrawDataset>(impl_);
}

std::function<Batch(std::vector<Example>&)> DeviceImages::collate() const {
  return [impl = impl_](std::vector<Example>& examples) { return impl->collate(examples); };
}

std::size_t DeviceImages::size() const { return static_cast<std::size_t>(impl_->images.size(0)); }
c10::Device DeviceImages::device() const { return impl_->device; }

}  // namespace cppfabric::data
