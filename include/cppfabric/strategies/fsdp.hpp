// FSDPStrategy: Fully Sharded Data Parallel. Every process keeps 1/N of each unit's parameters,
// gradients and optimizer state; a unit's full parameters are all-gathered just before its
// forward and again for its backward, and its gradients are reduce-scattered so that each process
// keeps the gradient of its own shard. Chosen by `strategy="fsdp"` (FULL_SHARD) and
// `"fsdp_cpu_offload"`. NCCL on CUDA devices, Gloo on CPUs.
//
//   Fabric fabric({.accelerator = "cpu", .strategy = "fsdp", .devices = 2});
//   fabric.launch();
//   auto net = fabric.setup_module(model);                 // parameters become shards
//   auto optimizer = std::make_shared<torch::optim::AdamW>(
//       net->parameters(), torch::optim::AdamWOptions(1e-3)); // sees only this rank's shards
//   auto opt = fabric.setup_optimizers(optimizer);
//   // fabric.setup(model, optimizer) works too, as in Python with use_orig_params=True.
//
//   auto fsdp = std::make_shared<cppfabric::strategies::FSDPStrategy>(
//       cppfabric::strategies::FSDPOptions{.sharding_strategy = "SHARD_GRAD_OP"});
//   Fabric fabric({.strategy = fsdp, .devices = 4});
//
//   // HYBRID_SHARD: shard within each node, replicate across nodes (or any {replicas, shard
//   // size} with device_mesh, e.g. {2, 2} on 4 devices of one node).
//   FSDPOptions{.sharding_strategy = "HYBRID_SHARD", .device_mesh = {2, 2}}
//
// Units: the set-up module is always the outer unit. Submodules declared as
// cppfabric::strategies::FSDPUnit<Impl> (strategies/fsdp_unit.hpp) are inner units, gathered and
// freed one at a time: that is what lets a model larger than one device's memory train.
//
// Deviations from Python (docs/sharding.md): FSDP runs on CPUs over Gloo (Python refuses);
// frozen parameters (requires_grad false) are not sharded; between steps a parameter holds a flat
// 1-D piece of this rank's shard (as Python's use_orig_params=True), possibly empty.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "cppfabric/strategies/sharding.hpp"

namespace cppfabric::strategies {

struct FSDPOptions {
  /// "FULL_SHARD" (Python's default; inner units freed after forward), "SHARD_GRAD_OP" (kept
  /// from forward to backward), "NO_SHARD" (DDP-like: whole parameters, gradients all-reduced),
  /// "HYBRID_SHARD" (FULL_SHARD within each node, replicated across nodes: gradients are
  /// reduce-scattered within the node, then all-reduced across nodes; see `device_mesh`),
  /// "_HYBRID_SHARD_ZERO2" (the same, keeping units gathered from forward to backward as
  /// SHARD_GRAD_OP).
  std::string sharding_strategy = "FULL_SHARD";
  /// Keep parameters and optimizer state in CPU memory. On CPU devices this is what already
  /// happens; with CUDA devices it is not available yet.
  bool cpu_offload = false;
  /// "sharded" (Python's default) or "full": the checkpoint form fabric.save writes.
  std::string state_dict_type = "sharded";
  /// How long any collective may wait for the other ranks (Fabric's default, 30 minutes).
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
  /// "" picks "nccl" for CUDA devices and "gloo" for CPUs.
  std::string process_group_backend = "";
  /// HYBRID_SHARD only: {replicas, shard size} (Lightning's `device_mesh=(replication size,
  /// sharding size)`), whose product must equal the world size. Ranks [k*S, (k+1)*S) form shard
  /// group k; ranks with the same position in their shard group form a replicate group. Empty
  /// (default): one shard group per node ({num_nodes, devices}).
  std::vector<int> device_mesh = {};
};

class FSDPStrategy : public ShardingStrategy {
 public:
  explicit FSDPStrategy(FSDPOptions options = {});
  ~FSDPStrategy() override;
  /// Registers "fsdp" and "fsdp_cpu_offload".
  static void register_strategies(StrategyRegistry& registry);

  std::string name() const override;
  const FSDPOptions& fsdp_options() const { return options_; }
  std::string checkpoint_form() const override { return options_.state_dict_type; }

 protected:
  std::vector<UnitParams> partition(torch::nn::Module& module) override;
  void configure(detail::ShardingConfig& config) const override;
  void after_sharding(torch::nn::Module& module, detail::ShardedModule& sharded) override;
  /// HYBRID_SHARD: device_mesh's shard size, or the devices per node; else 0 (the whole world).
  int shard_group_size() const override;

 private:
  FSDPOptions options_;
};

}  // namespace cppfabric::strategies
