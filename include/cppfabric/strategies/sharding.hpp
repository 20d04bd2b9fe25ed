// ShardingStrategy: what FSDPStrategy (strategies/fsdp.hpp) and ZeROStrategy (strategies/zero.hpp)
// share: parameters, gradients and optimizer state split over the processes, on top of DDP's
// process group, launcher and collectives. Not used directly: pick "fsdp" or "deepspeed_stage_2".
//
//   auto* sharding = dynamic_cast<cppfabric::strategies::ShardingStrategy*>(
//       fabric.strategy().get());
//   {
//     auto full = sharding->summon_full_params(*net.module());  // every rank sees whole tensors
//     save_somewhere(net->fc1->weight);
//   }                                                           // back to shards
//   cppfabric::strategies::ShardingMemory m = sharding->memory_stats(*net.module());
//
// The optimizer only ever sees this rank's shards: FSDP keeps the module's own parameter tensors
// (they hold a flat 1-D piece of the shard between steps, their full shape during forward and
// backward), ZeRO rebinds the optimizer's parameters to tensors viewing this rank's shard.
// docs/sharding.md explains when to pick which.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cppfabric/strategies/ddp.hpp"

namespace cppfabric::detail {
struct ShardingConfig;
class ShardedModule;
}  // namespace cppfabric::detail

namespace cppfabric::strategies {

/// Bytes of one sharded module's flat buffers on this rank.
struct ShardingMemory {
  int64_t full_bytes = 0;          ///< full (gathered) parameter buffers allocated now
  int64_t peak_full_bytes = 0;     ///< the most allocated at once since the last reset
  int64_t shard_bytes = 0;         ///< this rank's parameter shards (padding included)
  int64_t total_param_bytes = 0;   ///< every sharded parameter, unpadded
  int64_t largest_unit_bytes = 0;  ///< the largest unit's full buffer
};

class ShardingStrategy : public DDPStrategy {
 public:
  ~ShardingStrategy() override;

  /// DDP's process group, then (HYBRID_SHARD) the shard and replicate sub-groups.
  void setup_environment() override;
  /// The ranks a module's parameters are sharded over: the whole world's group, except under
  /// HYBRID_SHARD, where it is this rank's shard group (e.g. its node). Null before launch.
  std::shared_ptr<collectives::ProcessGroup> shard_group() const;
  /// HYBRID_SHARD: the ranks holding the same shard as this one (one per shard group), across
  /// which gradients are all-reduced after the reduce-scatter. Null otherwise.
  const std::shared_ptr<collectives::ProcessGroup>& replicate_group() const {
    return replicate_group_;
  }

  std::shared_ptr<torch::nn::Module> setup_module(
      std::shared_ptr<torch::nn::Module> module) override;
  void setup_optimizer(torch::optim::Optimizer& optimizer) override;
  Guard forward_context(torch::nn::Module& module) override;
  at::Tensor convert_output(torch::nn::Module& module, const at::Tensor& output) override;
  Guard no_backward_sync(torch::nn::Module& module, bool enabled) override;
  /// A backward that throws drops its pass at once (waits for the collectives it launched and
  /// reshards the units it left gathered), so that zero_grad before the next step reaches every
  /// gradient; then rethrows.
  void backward(const at::Tensor& tensor, const at::Tensor& gradient,
                std::optional<bool> retain_graph, bool create_graph) override;
  void optimizer_step(torch::optim::Optimizer& optimizer) override;
  /// The norm over every rank's shard (an all-reduce of the local sums), as Python's
  /// FSDP.clip_grad_norm_.
  at::Tensor clip_gradients_norm(torch::optim::Optimizer& optimizer, double max_norm,
                                 double norm_type, bool error_if_nonfinite) override;
  void clip_gradients_value(torch::optim::Optimizer& optimizer, double clip_val) override;
  void teardown() override;

  /// Checkpoints of set-up modules and their optimizers in the form checkpoint_form() names:
  /// "sharded": a directory in PyTorch's distributed-checkpoint layout (checkpoint/sharded.hpp)
  /// where every rank writes its own pieces, each parameter and optimizer state under its name
  /// (Python FSDP's sharded state dict); "full": rank 0 writes one torch.save file with whole
  /// tensors, the optimizer state keyed by parameter names (Python's FSDP optim_state_dict).
  /// Loading reads either form at any world size (a directory saved by 2 ranks loads on 1 or 3).
  /// Other entries (step counters, schedulers) go to the directory's meta.pt. `filter` applies
  /// to those other entries only.
  void save_checkpoint(const std::string& path, const State& state,
                       const SaveFilter& filter = {}) override;
  State load_checkpoint(const std::string& path, State& state, bool strict = true) override;
  /// "sharded" or "full".
  virtual std::string checkpoint_form() const { return "sharded"; }

  /// Gathers the full parameters of a set-up module (collective: every rank calls it); the
  /// guard returns them to shards. ZeRO's parameters are always whole: the guard does nothing.
  Guard summon_full_params(torch::nn::Module& module);
  /// The flat buffers of a set-up module on this rank.
  ShardingMemory memory_stats(torch::nn::Module& module) const;
  void reset_peak_memory(torch::nn::Module& module);
  /// How many units (FSDP) or buckets (ZeRO) the module was split into.
  std::size_t num_units(torch::nn::Module& module) const;

 protected:
  explicit ShardingStrategy(DDPOptions ddp);
  using UnitParams = std::vector<std::pair<std::string, at::Tensor>>;
  /// Splits the module's trainable parameters into units; unit 0 is the outer unit.
  virtual std::vector<UnitParams> partition(torch::nn::Module& module) = 0;
  virtual void configure(detail::ShardingConfig& config) const = 0;
  /// Called once the module is sharded (FSDP binds its declared inner units here).
  virtual void after_sharding(torch::nn::Module& module, detail::ShardedModule& sharded) {}
  /// The dtype floating-point buffers are cast to at setup_module (FSDP's mixed_precision
  /// buffer_dtype); checkpoints still save and load them in their original dtype.
  virtual std::optional<c10::ScalarType> buffer_dtype() const { return std::nullopt; }
  /// How many consecutive global ranks form one shard group (HYBRID_SHARD); 0 or the world size:
  /// one group of every rank. Must divide the world size. Called once the ranks are known.
  virtual int shard_group_size() const { return 0; }
  detail::ShardedModule* sharded_for(const torch::nn::Module& module) const;

 private:
  /// With a GradScaler ("16-mixed"): each rank only sees its shard's gradients, so an inf/NaN
  /// found on one rank is all-reduced (max) before the scaler looks, and ranks that saw none mark
  /// one of their gradients non-finite: every rank's scaler then skips the step and backs off
  /// together (Python's ShardedGradScaler agrees the same way). Once per optimizer step.
  void agree_on_infs(torch::optim::Optimizer& optimizer);
  /// While the guard lives, buffers cast by buffer_dtype() are back in their original dtype (for
  /// saving and loading checkpoints).
  Guard original_buffer_dtypes();

  struct Entry;
  std::vector<std::unique_ptr<Entry>> entries_;
  std::vector<const void*> agreed_;  // optimizers whose inf check was agreed this step
  std::shared_ptr<collectives::ProcessGroup> shard_group_;      // HYBRID_SHARD only
  std::shared_ptr<collectives::ProcessGroup> replicate_group_;  // HYBRID_SHARD only
};

}  // namespace cppfabric::strategies
