// Fabric::setup_dataloaders: distributed sampler injection and device placement.
#include <torch/torch.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cppfabric/fabric.hpp"
#include "utilities/env.hpp"

namespace cppfabric {

namespace {
// Python: int(os.getenv("PL_GLOBAL_SEED", 0)); no bounds check, no warning (seed_everything has both).
uint64_t global_seed_from_env() {
  return static_cast<uint64_t>(
      detail::env_int("PL_GLOBAL_SEED", "an integer seed, or unset").value_or(0));
}
}  // namespace

void Fabric::throw_dataloader_already_setup() {
  throw std::invalid_argument(
      "A dataloader should be passed only once to the `setup_dataloaders` method.");
}

FabricDataLoader Fabric::setup_dataloader(const data::DataLoader& loader,
                                          const SetupDataloadersOptions& options) {
  data::DataLoader result = loader;
  const auto sampler_args = strategy()->distributed_sampler_kwargs();
  const auto& original = loader.sampler();
  if (options.use_distributed_sampler && sampler_args &&
      !(original && (original->name() == "DistributedSampler" ||
                     original->name() == "DistributedSamplerWrapper"))) {
    const std::string kind = original ? original->name() : "";
    const data::DistributedSampler::Options dist_options{.num_replicas = sampler_args->num_replicas,
                                                         .rank = sampler_args->rank,
                                                         .shuffle = kind == "RandomSampler",
                                                         .seed = global_seed_from_env(),
                                                         .drop_last = false};
    std::shared_ptr<data::Sampler> sampler;
    if (kind == "RandomSampler" || kind == "SequentialSampler") {
      sampler = std::make_shared<data::DistributedSampler>(loader.dataset()->size(), dist_options);
    } else {
      // A custom sampler keeps its own order; each rank takes its share of it.
      sampler = std::make_shared<data::DistributedSamplerWrapper>(original, dist_options);
    }
    // A new loader with the same options, the distributed sampler in place of the old one.
    data::DataLoaderOptions updated = loader.options();
    updated.shuffle = false;
    updated.sampler = sampler;
    result = data::DataLoader(loader.dataset(), std::move(updated));
  }
  std::optional<c10::Device> device;
  if (options.move_to_device) device = this->device();
  return FabricDataLoader(std::move(result), device);
}

}  // namespace cppfabric
