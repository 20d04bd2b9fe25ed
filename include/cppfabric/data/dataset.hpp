// Dataset: what a DataLoader reads from, one example at a time (Python's map-style Dataset).
//
//   struct Squares : cppfabric::data::Dataset {
//     size_t size() const override { return 100; }
//     Example get(size_t i) const override { return {torch::full({1}, double(i)), torch::tensor(i *
//     i)}; }
//   };
//   cppfabric::data::TensorDataset ds(images, labels);   // rows of two tensors
//
// get() is called concurrently from the loader's worker threads, so it must be safe to call from
// several threads at once (reading shared tensors is; mutating members is not).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace cppfabric::data {

/// One sample: the input and its target (either may be undefined when a dataset has none).
struct Example {
  at::Tensor data;
  at::Tensor target;
};

/// A collated batch: `data` and `target` stacked along a new first dimension.
struct Batch {
  at::Tensor data;
  at::Tensor target;
};

class Dataset {
 public:
  virtual ~Dataset();
  /// Number of examples (Python's __len__).
  virtual std::size_t size() const = 0;
  /// The example at `index` (Python's __getitem__); index < size(). Thread-safe.
  virtual Example get(std::size_t index) const = 0;
};

/// Rows of `data` and `target` (Python's TensorDataset with two tensors). Both must have the same
/// first dimension; `target` may be undefined.
class TensorDataset : public Dataset {
 public:
  TensorDataset(at::Tensor data, at::Tensor target = {});
  std::size_t size() const override;
  Example get(std::size_t index) const override;
  const at::Tensor& data() const { return data_; }
  const at::Tensor& target() const { return target_; }

 private:
  at::Tensor data_;
  at::Tensor target_;
};

}  // namespace cppfabric::data
