// The flat-parameter core behind FSDPStrategy and ZeROStrategy. Private to the library.
//
// A module's trainable parameters are split into units (FSDP: the outer module and each declared
// FSDPUnit; ZeRO: buckets of about `bucket_cap` elements). Per unit the parameters are packed
// into one flat buffer padded to a multiple of the world size; this rank keeps chunk `rank` of it
// (its shard). Two layouts:
//
//  - Swap (FSDP): each parameter (the user's own tensor, so its optimizer and name stay valid) is
//    switched with set_data() between a flat piece of the shard (between steps: the optimizer sees
//    and updates only this rank's elements) and a view, in its own shape, into the full buffer
//    (while gathered: forward and backward). The full buffer's storage is freed by resizing it to
//    0 bytes and reallocated for the next all-gather, so tensors the autograd graph saved (views
//    of the weights) see the gathered data again in backward.
//  - Replicated (ZeRO): parameters stay views into a full buffer that lives on; the optimizer is
//    rebound to separate leaf tensors, one per parameter, viewing this rank's shard; after the
//    optimizer step the shards are all-gathered into the full buffers.
//
// Gradients: a post-hook on each parameter's gradient accumulator marks it ready; when a unit's
// parameters are all ready (or at the end of the backward pass, for those that got none) the
// unit's gradients are packed into a flat buffer, pre-divided by the world size, and
// reduce-scattered (or all-reduced, for ZeRO stage 1 and NO_SHARD) into the unit's shard
// gradient (HYBRID_SHARD: within the shard group, then all-reduced across the replicas), which
// the optimizer's tensors see as their `.grad`. On the all-reduce path (nothing accumulated, no
// mixed-precision cast) each parameter's own gradient is all-reduced in place instead of a packed
// copy. The full-size gradients are then freed. With `overlap` the collectives are launched
// asynchronously (Swap units are resharded at once; at most 2 in flight) and waited for at the
// end of the backward pass. While synchronisation is off (no_backward_sync) gradients accumulate, full
// size, in a per-unit buffer and are reduced by the next synchronised backward.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cppfabric/collectives/process_group.hpp"
#include "cppfabric/guard.hpp"
#include "cppfabric/strategies/sharding.hpp"

namespace cppfabric::detail {

enum class ParamLayout { Swap, Replicated };
enum class GradReduce { ReduceScatter, AllReduce };

struct ShardingConfig {
  ParamLayout layout = ParamLayout::Swap;
  /// False: every rank keeps whole units (FSDP NO_SHARD); the shard is the full buffer.
  bool shard_params = true;
  GradReduce reduce = GradReduce::ReduceScatter;
  /// Free an inner unit's full parameters after its forward (FULL_SHARD) and gather them again
  /// for its backward. The outer unit keeps them until after backward (as Python's root unit).
  bool reshard_after_forward = true;
  /// Launch the gradient collectives asynchronously; wait for them at the end of backward.
  bool overlap = false;
  /// FSDP mixed precision (Swap layout only): the gathered parameters' dtype and the gradient
  /// collectives' dtype; unset: the parameters' own. Shards and shard gradients keep the
  /// parameters' dtype.
  std::optional<c10::ScalarType> param_dtype{};
  std::optional<c10::ScalarType> reduce_dtype{};
  /// CPU offload (FSDP, Swap layout only; Python's CPUOffload(offload_params=True)): set, each
  /// unit's shard and shard gradient (so the optimizer and its state) live in host memory, pinned
  /// when this is a CUDA device; the full buffer is a separate one on this device. A gather copies
  /// the shard here (non-blocking from pinned memory), casts it here under mixed precision, and
  /// all-gathers here; gradients are packed and reduced here and the reduced shard copied back.
  std::optional<c10::Device> compute_device{};
  /// For messages: "fsdp", "deepspeed_stage_2", ...
  std::string strategy_name;
  /// HYBRID_SHARD: the ranks holding the same shards as this one (one per shard group). The
  /// ShardedModule's group is then the shard group: parameters are sharded and gathered within
  /// it, gradients reduce-scattered within it and then all-reduced across this group, and they
  /// are pre-divided by both sizes (the data-parallel world), so averaging equals DDP's. Null:
  /// the shard group is the whole world.
  std::shared_ptr<collectives::ProcessGroup> replicate_group;
};

/// A unit as given to ShardedModule: its parameters with their full names.
using UnitParams = std::vector<std::pair<std::string, at::Tensor>>;

using ShardingMemory = strategies::ShardingMemory;

class ShardedModule {
 public:
  /// Units' parameters must already be identical on every rank (the strategy broadcasts first).
  /// Unit 0 is the outer unit (may be empty).
  ShardedModule(std::vector<UnitParams> units, std::shared_ptr<collectives::ProcessGroup> group,
                ShardingConfig config);
  ~ShardedModule();
  ShardedModule(const ShardedModule&) = delete;
  ShardedModule& operator=(const ShardedModule&) = delete;

  /// Around the outer module's forward.
  void before_outer_forward();
  void after_outer_forward(bool grad_enabled);
  /// Wraps a tensor output of the outer module (as after_unit_forward does for inner units): its
  /// backward gathers the outer unit, which a second backward through a retained graph needs.
  at::Tensor after_outer_output(const at::Tensor& output);
  /// Around inner unit `u`'s forward (u >= 1). after_unit_forward wraps a tensor output so that
  /// its backward gathers the unit again (FULL_SHARD); untracked outputs keep the unit gathered.
  void before_unit_forward(std::size_t u);
  at::Tensor after_unit_forward(std::size_t u, const at::Tensor& output);
  void after_unit_forward_untracked(std::size_t u);
  /// Activation checkpointing (activation_checkpoint.cpp): after inner unit `u`'s no-grad forward,
  /// frees it if reshard_after_forward; in backward, gathers it again for the recomputation.
  void after_unit_checkpointed_forward(std::size_t u);
  void before_unit_recompute(std::size_t u);

  /// After a backward that threw (Fabric's backward catches): waits for and drops what the pass
  /// launched and reshards the units left gathered, so that zero_grad reaches every gradient.
  void discard_failed_backward();
  void set_require_sync(bool require);
  bool require_sync() const;
  /// ZeRO: all-gathers every unit's updated shard into its full buffer.
  void after_optimizer_step();
  /// Gathers every unit (collective), in the parameters' own dtype even under mixed precision
  /// (as Python's summon_full_params); the guard reshards them.
  Guard summon_full_params();
  /// The tensor the optimizer must hold for `param` (itself for Swap), or undefined if `param`
  /// is not sharded here.
  at::Tensor shard_variable_for(const at::Tensor& param) const;
  /// Every tensor the optimizer may hold (Swap: the parameters; Replicated: the shard tensors).
  std::vector<at::Tensor> shard_variables() const;
  /// True when ranks hold disjoint pieces (norms must be summed across ranks).
  bool sharded() const;
  std::size_t num_units() const;
  /// Expires when this object is destroyed (FSDPUnit checks it before calling back).
  std::weak_ptr<void> liveness() const { return state_; }
  ShardingMemory memory() const;
  void reset_peak_memory();

  /// One sharded parameter as checkpoints see it: this rank holds elements
  /// [piece_from, piece_from + piece_len) of the flattened parameter in `piece` (NO_SHARD: all).
  struct MemberInfo {
    std::string name;
    std::vector<int64_t> sizes;
    int64_t piece_from = 0;
    int64_t piece_len = 0;
    at::Tensor piece;      ///< a 1-D view of this rank's elements in the shard
    at::Tensor shard_var;  ///< what the optimizer holds for this parameter
  };
  /// Every sharded parameter, unit by unit (the module must be resharded: between steps).
  std::vector<MemberInfo> members() const;
  /// Full tensors (in each member's shape) from one 1-D piece per member, in members() order
  /// (undefined: zeros); e.g. an optimizer state. Collective (every rank calls it).
  std::vector<at::Tensor> gather_pieces(const std::vector<at::Tensor>& pieces) const;
  /// Replicated: copies every shard into the full buffers (after the shards were loaded).
  void refresh_full();

  struct State;  // shared with the autograd hooks

 private:
  std::shared_ptr<State> state_;
};

}  // namespace cppfabric::detail
