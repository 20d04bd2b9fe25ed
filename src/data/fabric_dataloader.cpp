#include "cppfabric/data/fabric_dataloader.hpp"

#include <torch/torch.h>

namespace cppfabric {

FabricDataLoader::FabricDataLoader(data::DataLoader loader, std::optional<c10::Device> device)
    : loader_(std::move(loader)), device_(device), num_iter_calls_(std::make_shared<int64_t>(0)) {}

FabricDataLoader::Iterator FabricDataLoader::begin() {
  // Without this a DistributedSampler would hand out the same indices every epoch.
  const auto& sampler = loader_.sampler();
  if (sampler && sampler->has_set_epoch()) sampler->set_epoch(*num_iter_calls_);
  ++*num_iter_calls_;
  return Iterator(loader_.begin(), device_);
}

FabricDataLoader::Iterator::Iterator(data::DataLoader::Iterator inner,
                                     std::optional<c10::Device> device)
    : inner_(std::move(inner)), device_(device) {
  move_current();
}

void FabricDataLoader::Iterator::move_current() {
  if (inner_ == data::DataLoader::Sentinel{}) {
    current_ = {};
    return;
  }
  current_ = std::move(*inner_);
  if (!device_) return;
  const bool non_blocking = device_->is_cuda() && inner_.pinned();
  auto move = [&](at::Tensor& t) {
    if (t.defined() && t.device() != *device_) t = t.to(*device_, non_blocking);
  };
  move(current_.data);
  move(current_.target);
  if (!current_.fields.is_none())
    current_.fields = data::move_to_device(current_.fields, *device_, non_blocking);
}

FabricDataLoader::Iterator& FabricDataLoader::Iterator::operator++() {
  ++inner_;
  move_current();
  return *this;
}

}  // namespace cppfabric
