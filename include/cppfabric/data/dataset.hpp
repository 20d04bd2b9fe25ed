// Dataset: what a DataLoader reads from, one example at a time (Python's map-style Dataset).
//
//   struct Squares : cppfabric::data::Dataset {
//     size_t size() const override { return 100; }
//     Example get(size_t i) const override { return {torch::full({1}, double(i)), torch::tensor(i *
//     i)}; }
//   };
//   cppfabric::data::TensorDataset ds(images, labels);   // rows of two tensors
//   // Samples that are tuples / vectors / maps of tensors: Example::of(...) (collection.hpp).
//   // LibTorch's own torch::data datasets: cppfabric::data::from_torch (torch_adapter.hpp).
//
// get() is called concurrently from the loader's worker threads, so it must be safe to call from
// several threads at once (reading shared tensors is; mutating members is not).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <string>
#include <utility>

#include "cppfabric/data/collection.hpp"
#include "cppfabric/value.hpp"

namespace cppfabric::data {

/// One sample: the input and its target (either may be undefined when a dataset has none), and
/// `fields` for samples that are another collection (a tuple, vector or string-keyed map of
/// tensors, nested as needed; None for a plain (data, target) pair). See collection.hpp.
struct Example {
  Example() = default;
  Example(at::Tensor data, at::Tensor target = {})  // NOLINT(google-explicit-constructor)
      : data(std::move(data)), target(std::move(target)) {}
  /// A sample that is a collection: Example::of(std::tuple{x, y, w}),
  /// Example::of(std::map<std::string, at::Tensor>{...}), Example::of(std::vector{a, b}).
  template <typename T>
  static Example of(const T& collection) {
    Example example;
    example.fields = Collection<T>::to(collection);
    return example;
  }

  at::Tensor data;
  at::Tensor target;
  Value fields;
};

/// A collated batch: `data` and `target` stacked along a new first dimension, and `fields`
/// collated as Python's default_collate does (tensors stacked, numbers made tensors, lists,
/// tuples and maps collated item by item).
struct Batch {
  Batch() = default;
  Batch(at::Tensor data, at::Tensor target = {})  // NOLINT(google-explicit-constructor)
      : data(std::move(data)), target(std::move(target)) {}

  /// The tensor under `key` when the samples were string-keyed maps.
  const at::Tensor& field(const std::string& key) const;
  /// The tensor at `index` when the samples were tuples or vectors.
  const at::Tensor& field(std::size_t index) const;
  /// `fields` as a C++ collection: std::tuple<at::Tensor, ...>, std::vector<at::Tensor>,
  /// std::map<std::string, at::Tensor>, nested ones, ... (collection.hpp). Throws
  /// std::invalid_argument naming what was asked and what the batch holds.
  template <typename T>
  T as() const {
    return Collection<T>::from(fields, "Batch::as");
  }

  at::Tensor data;
  at::Tensor target;
  Value fields;
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
