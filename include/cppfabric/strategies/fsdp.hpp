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
// FSDPOptions::activation_checkpointing_policy makes chosen inner units recompute their
// activations in backward instead of keeping them (Python's activation checkpointing).
//
// Deviations from Python (docs/sharding.md): FSDP runs on CPUs over Gloo (Python refuses);
// frozen parameters (requires_grad false) are not sharded; between steps a parameter holds a flat
// 1-D piece of this rank's shard (as Python's use_orig_params=True), possibly empty.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/strategies/sharding.hpp"

namespace torch::nn {
class Module;
}

namespace cppfabric::strategies {

/// Python FSDP's MixedPrecision: the dtypes FSDP itself casts to, per unit, around forward and
/// backward (module-level mixed precision, unlike autocast's per-op casts). The shards, and so the
/// optimizer and checkpoints, stay in the parameters' own dtype.
///
///   FSDPOptions{.mixed_precision = FSDPMixedPrecision{.param_dtype = torch::kBFloat16,
///                                                     .reduce_dtype = torch::kFloat32}}
struct FSDPMixedPrecision {
  /// The dtype of the gathered parameters, so of forward and backward computation and of the
  /// parameters' gradients. The shard is cast before the all-gather (half the traffic for bf16).
  /// Unset: the parameters' own dtype.
  std::optional<c10::ScalarType> param_dtype{};
  /// The dtype gradients are reduced in. Unset: param_dtype's (Python: "still running gradient
  /// reduction in low precision"). The reduced shard gradient is cast back to the shard's dtype.
  std::optional<c10::ScalarType> reduce_dtype{};
  /// Floating-point buffers (e.g. BatchNorm running statistics) are cast to this dtype at
  /// setup_module and stay so; checkpoints save and load them in their original dtype. Unset:
  /// buffers are left alone.
  std::optional<c10::ScalarType> buffer_dtype{};
  /// Cast the floating-point tensor arguments of the set-up module's forward to param_dtype
  /// (Python's cast_root_forward_inputs, default true).
  bool cast_root_forward_inputs = true;
};
/// Selects the inner units (FSDPUnit) whose activations are recomputed in backward: called once
/// per inner unit at setup with the unit's name as named_modules gives it ("blocks.3") and its
/// module. See FSDPOptions::activation_checkpointing_policy.
using ActivationCheckpointingPolicy =
    std::function<bool(const std::string& name, const torch::nn::Module& unit)>;

/// A policy selecting every declared inner unit.
ActivationCheckpointingPolicy checkpoint_all_units();
// checkpoint_module_types<BlockImpl, ...>() (strategies/fsdp_unit.hpp): the units whose module is
// one of these types, as Python's `activation_checkpointing_policy={Block}`.

struct FSDPOptions {
  /// "FULL_SHARD" (Python's default; inner units freed after forward), "SHARD_GRAD_OP" (kept
  /// from forward to backward), "NO_SHARD" (DDP-like: whole parameters, gradients all-reduced),
  /// "HYBRID_SHARD" (FULL_SHARD within each node, replicated across nodes: gradients are
  /// reduce-scattered within the node, then all-reduced across nodes; see `device_mesh`),
  /// "_HYBRID_SHARD_ZERO2" (the same, keeping units gathered from forward to backward as
  /// SHARD_GRAD_OP).
  std::string sharding_strategy = "FULL_SHARD";
  /// Python's CPUOffload(offload_params=True): each rank's parameter shards, their gradients and
  /// so the optimizer's state stay in host memory (pinned), and the optimizer steps on the CPU;
  /// a unit's shard is copied to the GPU just before it is all-gathered, and its reduce-scattered
  /// gradient shard is copied back. Create the optimizer after setup_module (the parameters are
  /// then CPU tensors). Saves GPU memory at the price of host-device copies and a CPU optimizer
  /// step. On CPU devices this is what already happens (nothing changes).
  bool cpu_offload = false;
  /// "sharded" (Python's default) or "full": the checkpoint form fabric.save writes.
  std::string state_dict_type = "sharded";
  /// Module-level mixed precision (Python's `mixed_precision`). Unset, as with Lightning's
  /// "bf16-mixed"/"16-mixed" (autocast) and "*-true" precisions: FSDP casts nothing. Set, it
  /// applies on top of (and independently of) Fabric's precision.
  std::optional<FSDPMixedPrecision> mixed_precision{};
  /// How long any collective may wait for the other ranks (Fabric's default, 30 minutes).
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
  /// "" picks "nccl" for CUDA devices and "gloo" for CPUs.
  std::string process_group_backend = "";
  /// Python's `activation_checkpointing_policy`: the inner units it selects keep only their
  /// inputs from forward and run their forward again in backward (same RNG and autocast state),
  /// trading compute for activation memory. Empty (default): none. Only declared inner units
  /// (FSDPUnit) can be selected; a selected unit's forward must return one at::Tensor.
  ///   .activation_checkpointing_policy = checkpoint_module_types<BlockImpl>()  // fsdp_unit.hpp
  ///   .activation_checkpointing_policy = [](const std::string& name, const torch::nn::Module&) {
  ///     return name != "blocks.0"; }
  ActivationCheckpointingPolicy activation_checkpointing_policy = nullptr;
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
  /// With cpu_offload on CUDA devices: trainable parameters to the CPU, buffers and frozen
  /// parameters to the device; otherwise the whole module to the device.
  void module_to_device(torch::nn::Module& module) override;

 protected:
  std::vector<UnitParams> partition(torch::nn::Module& module) override;
  void configure(detail::ShardingConfig& config) const override;
  void after_sharding(torch::nn::Module& module, detail::ShardedModule& sharded) override;
  std::optional<c10::ScalarType> buffer_dtype() const override;
  at::Tensor convert_input(torch::nn::Module& module, const at::Tensor& input) override;
  /// HYBRID_SHARD: device_mesh's shard size, or the devices per node; else 0 (the whole world).
  int shard_group_size() const override;

 private:
  /// cpu_offload with a CUDA root device (on CPU devices it changes nothing).
  bool offloads() const;

  FSDPOptions options_;
};

}  // namespace cppfabric::strategies
