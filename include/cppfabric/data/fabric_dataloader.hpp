// FabricDataLoader: what `fabric.setup_dataloaders(...)` returns.
//
//   auto [train, val] = fabric.setup_dataloaders(train_loader, val_loader);
//   for (int epoch = 0; epoch < epochs; ++epoch)
//     for (auto& batch : train) { ... }     // batch.data / batch.target already on fabric.device()
//
// Batches whose samples were collections (batch.fields: tuples, vectors, maps) are moved whole.
//
// Each new pass first calls set_epoch(pass number) on the sampler when it has one (so a
// DistributedSampler shuffles differently every epoch, as Python's FabricDataLoader does), then
// moves every batch to the device (non-blocking from pinned memory on CUDA). A cheap handle:
// copies share the loader and the pass count.
#pragma once

#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "cppfabric/data/dataloader.hpp"

namespace cppfabric {

/// The keyword arguments of `fabric.setup_dataloaders`; pass it last.
struct SetupDataloadersOptions {
  bool use_distributed_sampler = true;
  bool move_to_device = true;
};

class FabricDataLoader {
 public:
  /// `device` unset: batches stay where the loader made them.
  FabricDataLoader(data::DataLoader loader, std::optional<c10::Device> device);

  struct Sentinel {};
  class Iterator {
   public:
    Iterator() = default;
    data::Batch& operator*() { return current_; }
    data::Batch* operator->() { return &current_; }
    Iterator& operator++();
    bool operator==(Sentinel) const { return inner_ == data::DataLoader::Sentinel{}; }

   private:
    friend class FabricDataLoader;
    Iterator(data::DataLoader::Iterator inner, std::optional<c10::Device> device);
    void move_current();
    data::DataLoader::Iterator inner_;
    std::optional<c10::Device> device_;
    data::Batch current_;
  };

  /// Sets the sampler's epoch to the number of passes so far, then starts a pass.
  Iterator begin();
  Sentinel end() const { return {}; }

  /// Batches per pass (Python's len()).
  std::size_t size() const { return loader_.size(); }
  const std::optional<c10::Device>& device() const { return device_; }
  /// The wrapped loader (with the distributed sampler when one was injected).
  const data::DataLoader& loader() const { return loader_; }
  const std::shared_ptr<data::Sampler>& sampler() const { return loader_.sampler(); }
  /// How many passes have started (Python's _num_iter_calls).
  int64_t num_iter_calls() const { return *num_iter_calls_; }

 private:
  data::DataLoader loader_;
  std::optional<c10::Device> device_;
  std::shared_ptr<int64_t> num_iter_calls_;
};

}  // namespace cppfabric
