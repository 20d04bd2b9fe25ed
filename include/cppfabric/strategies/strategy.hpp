// Strategy: how a model, its optimizers and their gradients are spread over devices and
// processes. Fabric delegates setup, backward, optimizer steps and collectives to it.
//
//   Fabric fabric({.strategy = "auto"});          // single device here
//   fabric.strategy()->name();                    // "single_device"
//
// A strategy never reads options: the connector hands it an accelerator, a precision plugin,
// a CheckpointIO and its devices once. Strategies are found by name in the StrategyRegistry
// (strategies/registry.hpp); a strategy of your own subclasses Strategy and registers there.
//
// Checkpoints go through the strategy, as in Python: fabric.save() calls save_checkpoint(),
// fabric.load() load_checkpoint() and fabric.load_raw() load_raw_checkpoint(). The defaults
// convert every object on every rank, write on global rank 0 through checkpoint_io(), and read
// on every rank; a sharded strategy overrides them to write and read its own layout.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/collectives/process_group.hpp"
#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/guard.hpp"

namespace cppfabric {
class State;
class Stateful;
class Value;
}  // namespace cppfabric
namespace cppfabric::accelerators {
class Accelerator;
}
namespace cppfabric::precision {
class Precision;
}
namespace cppfabric::checkpoint {
class CheckpointIO;
}
namespace cppfabric::environments {
class ClusterEnvironment;
}
namespace cppfabric::launchers {
class Launcher;
}

namespace cppfabric::strategies {

class StrategyRegistry;

/// What a distributed sampler needs from the strategy (Python's distributed_sampler_kwargs).
struct DistributedSamplerArgs {
  int num_replicas = 1;
  int rank = 0;
};

/// Per-key filters for save_checkpoint(): for a key whose value saves as a dict, only the
/// entries with fn(entry_key, entry_value) == true are written (Python's `filter`).
using SaveFilter = std::map<std::string, std::function<bool(const Value& key, const Value& value)>>;

class Strategy {
 public:
  virtual ~Strategy();
  /// Registry name, e.g. "single_device", "ddp".
  virtual std::string name() const = 0;
  /// True for strategies that run several processes (launch() required).
  virtual bool is_parallel() const { return false; }

  // Wiring, done once by the connector.
  void set_accelerator(std::shared_ptr<accelerators::Accelerator> accelerator);
  void set_precision(std::shared_ptr<precision::Precision> precision);
  /// The CheckpointIO that writes and reads files (the connector sets TorchCheckpointIO unless a
  /// plugin or this strategy's constructor gave another).
  void set_checkpoint_io(std::shared_ptr<checkpoint::CheckpointIO> io);
  void set_cluster_environment(std::shared_ptr<environments::ClusterEnvironment> env);
  virtual void set_parallel_devices(std::vector<c10::Device> devices);
  void set_num_nodes(int num_nodes) { num_nodes_ = num_nodes; }
  const std::shared_ptr<accelerators::Accelerator>& accelerator() const { return accelerator_; }
  const std::shared_ptr<precision::Precision>& precision() const { return precision_; }
  const std::shared_ptr<checkpoint::CheckpointIO>& checkpoint_io() const { return checkpoint_io_; }
  const std::shared_ptr<environments::ClusterEnvironment>& cluster_environment() const {
    return cluster_environment_;
  }
  const std::vector<c10::Device>& parallel_devices() const { return parallel_devices_; }
  int num_nodes() const { return num_nodes_; }
  /// Called by the connector once everything above is set: parallel strategies compute their
  /// global rank and world size here (Python's _set_world_ranks).
  virtual void set_world_ranks() {}
  /// What `fabric.launch()` runs before setup_environment(): unset for one process.
  virtual std::shared_ptr<launchers::Launcher> launcher() { return nullptr; }

  // Ranks.
  virtual c10::Device root_device() const = 0;
  virtual int global_rank() const { return 0; }
  virtual int local_rank() const { return 0; }
  virtual int node_rank() const { return 0; }
  virtual int world_size() const { return 1; }
  bool is_global_zero() const { return global_rank() == 0; }
  /// Set when every process must see its own shard of the data (DDP and friends); unset on
  /// one device, where setup_dataloaders leaves the sampler alone.
  virtual std::optional<DistributedSamplerArgs> distributed_sampler_kwargs() const {
    return std::nullopt;
  }

  /// Device set-up and, for parallel strategies, the process group.
  virtual void setup_environment();
  virtual void module_to_device(torch::nn::Module& module);
  /// Wraps the module for this strategy (DDP hooks, sharding); returns the module to run.
  virtual std::shared_ptr<torch::nn::Module> setup_module(
      std::shared_ptr<torch::nn::Module> module);
  virtual void setup_optimizer(torch::optim::Optimizer& optimizer) {}

  /// Called around every FabricModule forward.
  virtual Guard forward_context(torch::nn::Module& module) { return {}; }
  /// Casts one tensor argument of a set-up module's forward, after the precision's
  /// convert_input (FSDP's mixed_precision casts floating-point inputs to its param_dtype).
  virtual at::Tensor convert_input(torch::nn::Module& module, const at::Tensor& input) {
    return input;
  }
  /// Passes on one tensor output of a set-up module's forward, after the precision's
  /// convert_output (FSDP hooks it: a backward through a retained graph gathers the outer unit's
  /// parameters again).
  virtual at::Tensor convert_output(torch::nn::Module& module, const at::Tensor& output) {
    return output;
  }

  virtual void backward(const at::Tensor& tensor, const at::Tensor& gradient,
                        std::optional<bool> retain_graph, bool create_graph);
  virtual void optimizer_step(torch::optim::Optimizer& optimizer);
  /// Clips the optimizer's gradients to `max_norm`; returns the total norm before clipping.
  virtual at::Tensor clip_gradients_norm(torch::optim::Optimizer& optimizer, double max_norm,
                                         double norm_type, bool error_if_nonfinite);
  virtual void clip_gradients_value(torch::optim::Optimizer& optimizer, double clip_val);
  /// Skips gradient synchronisation while the guard lives (no-op on one device).
  virtual Guard no_backward_sync(torch::nn::Module& module, bool enabled) { return {}; }

  virtual Guard tensor_init_context();
  virtual Guard module_init_context(bool empty_init);

  // Collectives; on one process they return their input.
  virtual void barrier(const std::string& name = "") {}
  /// A barrier that waits up to `timeout` rather than the collective timeout (rank_zero_first:
  /// rank 0 may download or preprocess for longer than that). Default: barrier(name).
  virtual void barrier_with_timeout(const std::string& name, std::chrono::milliseconds timeout) {
    barrier(name);
  }
  virtual at::Tensor broadcast(const at::Tensor& tensor, int src = 0) { return tensor; }
  virtual at::Tensor all_gather(const at::Tensor& tensor, bool sync_grads = false) {
    return tensor;
  }
  virtual at::Tensor all_reduce(const at::Tensor& tensor,
                                collectives::ReduceKind op = collectives::ReduceKind::Avg) {
    return tensor;
  }

  // Checkpoints.
  /// Saves `state` to `path`. Default: every rank converts its objects (state_dict()), global
  /// rank 0 writes through checkpoint_io(). fabric.save() adds a barrier after it.
  virtual void save_checkpoint(const std::string& path, const State& state,
                               const SaveFilter& filter = {});
  /// Reads `path` and loads it into the objects of `state`; plain values in `state` are replaced
  /// by the file's. Returns the entries of the file that `state` did not ask for. Default: every
  /// rank reads the whole file. With `strict`, a key of `state` missing in the file throws.
  virtual State load_checkpoint(const std::string& path, State& state, bool strict = true);
  /// Reads a bare state dict (no {"model": ...} wrapping) into one object (fabric.load_raw).
  virtual void load_raw_checkpoint(const std::string& path, Stateful& object, bool strict = true);

  virtual void teardown();

 protected:
  /// Python's _convert_stateful_objects_in_state: every object's state_dict(), then `filter`
  /// applied per key. Checks that the filter's keys are keys of `state`.
  Value convert_stateful_objects(const State& state, const SaveFilter& filter) const;
  /// Loads the dict `checkpoint` into `state`, removing the entries it used from `checkpoint`.
  static void load_state_into(State& state, Value& checkpoint, bool strict);
  /// checkpoint_io(), or std::logic_error when the strategy was never wired by a connector.
  checkpoint::CheckpointIO& require_checkpoint_io() const;

  std::shared_ptr<accelerators::Accelerator> accelerator_;
  std::shared_ptr<precision::Precision> precision_;
  std::shared_ptr<checkpoint::CheckpointIO> checkpoint_io_;
  std::shared_ptr<environments::ClusterEnvironment> cluster_environment_;
  std::vector<c10::Device> parallel_devices_;
  int num_nodes_ = 1;
};

}  // namespace cppfabric::strategies
