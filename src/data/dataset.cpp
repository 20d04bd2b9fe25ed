#include "cppfabric/data/dataset.hpp"

#include <torch/torch.h>

#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::data {

Dataset::~Dataset() = default;

TensorDataset::TensorDataset(at::Tensor data, at::Tensor target)
    : data_(std::move(data)), target_(std::move(target)) {
  if (!data_.defined() || data_.dim() == 0)
    throw std::invalid_argument(
        "TensorDataset: `data` must be a tensor with at least one dimension");
  if (target_.defined() && (target_.dim() == 0 || target_.size(0) != data_.size(0))) {
    throw std::invalid_argument(
        fmt::format("TensorDataset: size mismatch between tensors: data has {} rows, target has {}",
                    data_.size(0), target_.dim() == 0 ? int64_t{0} : target_.size(0)));
  }
}

std::size_t TensorDataset::size() const { return static_cast<std::size_t>(data_.size(0)); }

Example TensorDataset::get(std::size_t index) const {
  if (index >= size())
    throw std::out_of_range(
        fmt::format("TensorDataset: index {} out of range for {} examples", index, size()));
  const auto i = static_cast<int64_t>(index);
  return {data_[i], target_.defined() ? target_[i] : at::Tensor()};
}

}  // namespace cppfabric::data
