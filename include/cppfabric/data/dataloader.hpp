// DataLoader: batches from a Dataset, with Python's options, loaded by worker threads.
//
//   using namespace cppfabric::data;
//   DataLoader train_loader(std::make_shared<TensorDataset>(x, y),
//                           {.batch_size = 128, .shuffle = true, .num_workers = 4, .drop_last =
//                           true});
//   for (auto& batch : train_loader) {        // Batch{data, target}
//     auto out = model(batch.data);
//   }
//
// Workers are threads. At most prefetch_factor * num_workers batches are loaded ahead, and batches
// arrive in sampler order whatever the number of workers. An exception thrown while loading a
// sample is rethrown in the loop, as std::runtime_error naming the sample index. Leaving the loop
// early, or destroying the loader mid-pass, stops and joins the workers.
//
// A DataLoader is a handle: copies share the dataset, sampler and (persistent) workers.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "cppfabric/data/dataset.hpp"
#include "cppfabric/data/sampler.hpp"

namespace cppfabric::data {

/// Stacks examples into a batch (Python's default_collate for (data, target) pairs).
Batch default_collate(std::vector<Example>& examples, bool pin_memory = false);

/// Python's DataLoader keyword arguments.
struct DataLoaderOptions {
  std::size_t batch_size = 1;
  bool shuffle = false;
  /// Replaces the default SequentialSampler / RandomSampler; excludes shuffle.
  std::shared_ptr<Sampler> sampler = nullptr;
  int num_workers = 0;
  std::function<Batch(std::vector<Example>&)> collate_fn = nullptr;
  bool pin_memory = false;
  bool drop_last = false;
  /// Python's generator=torch.Generator().manual_seed(seed); `generator` wins when both are set.
  std::optional<uint64_t> seed = std::nullopt;
  std::optional<at::Generator> generator = std::nullopt;
  /// Batches loaded ahead per worker; default 2 when num_workers > 0, must stay unset otherwise.
  std::optional<int> prefetch_factor = std::nullopt;
  /// Keep the worker threads between passes (requires num_workers > 0).
  bool persistent_workers = false;
};

class DataLoader {
  struct Impl;
  struct Pass;

 public:
  /// Throws std::invalid_argument for contradictory options, as Python does.
  DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options = {});
  template <typename D>
  requires std::derived_from<D, Dataset> DataLoader(D dataset, DataLoaderOptions options = {})
      : DataLoader(std::make_shared<const D>(std::move(dataset)), std::move(options)) {}

  struct Sentinel {};
  class Iterator {
   public:
    using value_type = Batch;
    using difference_type = std::ptrdiff_t;
    Iterator() = default;
    Batch& operator*() { return current_; }
    Batch* operator->() { return &current_; }
    Iterator& operator++();
    bool operator==(Sentinel) const { return done_; }
    /// Whether this pass's batches live in pinned memory.
    bool pinned() const;

   private:
    friend class DataLoader;
    explicit Iterator(std::shared_ptr<Pass> pass);
    std::shared_ptr<Pass> pass_;
    Batch current_;
    bool done_ = true;
  };

  /// Starts a pass: draws the pass's seeds, asks the sampler for indices, starts the workers.
  Iterator begin();
  Sentinel end() const { return {}; }

  /// Number of batches per pass (Python's len(loader)).
  std::size_t size() const;
  const std::shared_ptr<const Dataset>& dataset() const;
  const std::shared_ptr<Sampler>& sampler() const;
  const BatchSampler& batch_sampler() const;
  const DataLoaderOptions& options() const;
  /// pin_memory and an accelerator that can use pinned memory.
  bool pin_memory() const;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace cppfabric::data
