// from_torch: LibTorch's own `torch::data` datasets as cppfabric datasets, so that
// cppfabric::data::DataLoader, fabric.setup_dataloaders (DistributedSampler), worker threads and
// device moves apply to them.
//
//   #include <cppfabric/data/torch_adapter.hpp>
//   auto mnist = torch::data::datasets::MNIST("data/mnist")
//                    .map(torch::data::transforms::Normalize<>(0.1307, 0.3081));
//   cppfabric::data::DataLoader loader(cppfabric::data::from_torch(std::move(mnist)),
//                                      {.batch_size = 64, .shuffle = true, .num_workers = 2});
//   auto train = fabric.setup_dataloaders(loader);
//   for (auto& batch : train) { ... batch.data, batch.target ... }
//
// Any map-style torch::data dataset works: a `torch::data::datasets::Dataset<Self, E>` of your
// own, LibTorch's MNIST, and either of them with `.map(...)` of per-example transforms applied.
// Examples become cppfabric Examples:
//   torch::data::Example<Tensor, Tensor>        -> data, target
//   torch::data::Example<Tensor, NoTarget>      -> data
//   at::Tensor                                  -> data
//   std::tuple / std::pair / std::vector /      -> fields (Batch::as<...>() / Batch::field(...))
//   std::map<std::string, ...> / Value
// Leave batching to the loader: a `.map(torch::data::transforms::Stack<>())` would turn the
// dataset into one that yields whole batches, which from_torch rejects at compile time.
//
// Threads: LibTorch's get()/get_batch() are not const. Like LibTorch's own DataLoader, each of
// the loader's threads gets its own copy of a copyable dataset (copies share tensor storage, so
// this is cheap for MNIST-like datasets); a dataset that cannot be copied is called under a
// mutex, one example at a time.
//
// This header includes <torch/data/...> (the one cppfabric header that does): include it only
// where you use from_torch; <cppfabric/cppfabric.hpp> leaves it out to stay light.
#pragma once

#include <torch/data/datasets/base.h>
#include <torch/data/example.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cppfabric/data/collection.hpp"
#include "cppfabric/data/dataset.hpp"

namespace cppfabric::data {

namespace torch_adapter_detail {

template <typename T>
struct is_std_vector : std::false_type {};
template <typename T, typename A>
struct is_std_vector<std::vector<T, A>> : std::true_type {};

/// One torch::data example as a cppfabric Example.
template <typename E>
Example to_example(E&& example) {
  using T = std::decay_t<E>;
  if constexpr (std::is_same_v<T, Example>) {
    return std::forward<E>(example);
  } else if constexpr (std::is_same_v<T, at::Tensor>) {
    return Example(std::forward<E>(example));
  } else {
    return Example::of(example);
  }
}

template <typename D, typename T>
Example to_example(torch::data::Example<D, T>&& example) {
  if constexpr (std::is_same_v<D, at::Tensor> && std::is_same_v<T, at::Tensor>) {
    return Example(std::move(example.data), std::move(example.target));
  } else {
    Example out;
    out.fields = Value::dict({{Value("data"), Collection<D>::to(example.data)},
                              {Value("target"), Collection<T>::to(example.target)}});
    return out;
  }
}

template <typename D>
Example to_example(torch::data::Example<D, torch::data::example::NoTarget>&& example) {
  if constexpr (std::is_same_v<D, at::Tensor>) {
    return Example(std::move(example.data));
  } else {
    return Example::of(example.data);
  }
}

}  // namespace torch_adapter_detail

/// A torch::data map-style dataset behind cppfabric's Dataset interface (see from_torch).
template <typename D>
class TorchDataset final : public Dataset {
  using BatchType = typename D::BatchType;
  static_assert(!D::is_stateful,
                "cppfabric::data::from_torch: this torch::data dataset is stateful (a stream or "
                "chunk dataset that yields std::optional batches); from_torch needs a map-style "
                "dataset with size() and indexed access.");
  static_assert(torch_adapter_detail::is_std_vector<BatchType>::value,
                "cppfabric::data::from_torch: this torch::data dataset yields whole batches "
                "rather than a std::vector of examples (was `.map(transforms::Stack<>())` "
                "applied?). Apply only per-example transforms; cppfabric's DataLoader stacks.");

 public:
  explicit TorchDataset(D dataset) : prototype_(std::move(dataset)) {
    const std::optional<std::size_t> n = prototype_.size();
    if (!n) {
      throw std::invalid_argument(
          "cppfabric::data::from_torch: the dataset's size() is unknown (std::nullopt); a "
          "DataLoader needs a map-style dataset with a size");
    }
    size_ = *n;
  }

  std::size_t size() const override { return size_; }

  Example get(std::size_t index) const override {
    if (index >= size_) {
      throw std::out_of_range("from_torch dataset: index " + std::to_string(index) +
                              " out of range for " + std::to_string(size_) + " examples");
    }
    std::vector<std::size_t> request{index};
    BatchType batch;
    if constexpr (std::is_copy_constructible_v<D>) {
      Lease lease(*this);
      batch = lease.dataset->get_batch(typename D::BatchRequestType(request));
    } else {
      std::lock_guard<std::mutex> lock(mutex_);
      batch = prototype_.get_batch(typename D::BatchRequestType(request));
    }
    if (batch.size() != 1) {
      throw std::runtime_error("from_torch dataset: get_batch({" + std::to_string(index) +
                               "}) returned " + std::to_string(batch.size()) +
                               " examples instead of one");
    }
    return torch_adapter_detail::to_example(std::move(batch.front()));
  }

  /// The wrapped torch::data dataset (not thread-safe to call while a loader runs).
  D& dataset() { return prototype_; }

 private:
  /// A copy of the dataset for one call, taken from (and given back to) a small pool.
  struct Lease {
    explicit Lease(const TorchDataset& owner) : owner(owner) {
      std::lock_guard<std::mutex> lock(owner.mutex_);
      if (!owner.pool_.empty()) {
        dataset = std::move(owner.pool_.back());
        owner.pool_.pop_back();
      } else {
        dataset = std::make_unique<D>(owner.prototype_);
      }
    }
    ~Lease() {
      std::lock_guard<std::mutex> lock(owner.mutex_);
      owner.pool_.push_back(std::move(dataset));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    const TorchDataset& owner;
    std::unique_ptr<D> dataset;
  };

  mutable D prototype_;
  std::size_t size_ = 0;
  mutable std::mutex mutex_;
  mutable std::vector<std::unique_ptr<D>> pool_;
};

/// Any map-style torch::data dataset (with `.map(...)` per-example transforms or not) as a
/// cppfabric dataset for cppfabric::data::DataLoader.
template <typename D>
std::shared_ptr<Dataset> from_torch(D dataset) {
  static_assert(std::is_base_of_v<
                    torch::data::datasets::BatchDataset<typename D::SelfType, typename D::BatchType,
                                                        typename D::BatchRequestType>,
                    D>,
                "cppfabric::data::from_torch takes a torch::data dataset (a subclass of "
                "torch::data::datasets::Dataset<Self, Example> or one with .map(...) applied); "
                "for a cppfabric::data::Dataset, pass it to DataLoader directly.");
  return std::make_shared<TorchDataset<D>>(std::move(dataset));
}

}  // namespace cppfabric::data
