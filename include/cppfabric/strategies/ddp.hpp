// DDPStrategy: one process per device, every process holds the whole model, gradients are
// averaged across processes during backward (bucketed all-reduce that overlaps the backward pass).
// Chosen by `strategy="ddp"`, by `"ddp_find_unused_parameters_true"`, and by `strategy="auto"`
// when more than one device or node is selected. NCCL on CUDA devices, Gloo on CPUs.
//
//   Fabric fabric({.accelerator = "cpu", .strategy = "ddp", .devices = 2});
//   fabric.launch();                                  // starts the second process
//   auto [net, opt] = fabric.setup(model, optimizer); // parameters broadcast from rank 0
//   fabric.backward(loss);                            // gradients averaged over both processes
//
//   auto ddp = std::make_shared<cppfabric::strategies::DDPStrategy>(
//       cppfabric::strategies::DDPOptions{.find_unused_parameters = true,
//                                         .timeout = std::chrono::minutes(5)});
//   Fabric fabric({.strategy = ddp, .devices = 4});
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "cppfabric/strategies/strategy.hpp"

namespace cppfabric::strategies {

struct DDPOptions {
  /// Reduce parameters that received no gradient in a backward pass (as zeros) instead of failing.
  bool find_unused_parameters = false;
  /// Broadcast the module's buffers (e.g. BatchNorm statistics) from rank 0 before each forward.
  bool broadcast_buffers = true;
  /// Bucket sizes of the gradient all-reduce, in MiB (Python's defaults).
  double bucket_cap_mb = 25.0;
  double first_bucket_cap_mb = 1.0;
  /// Make each parameter's `.grad` a view into the all-reduce bucket (Python's
  /// gradient_as_bucket_view): the averaged gradient is not copied back after the all-reduce, and
  /// gradients that stay allocated between steps (zero_grad(/*set_to_none=*/false), gradient
  /// accumulation) are not copied in either; gradients use no memory beyond the buckets. On by
  /// default (Python: off): `.grad` keeps its values, shape and dtype; only its storage is shared
  /// with the bucket, so don't replace it with `set_`/`detach_()` while training. Non-contiguous
  /// parameters (e.g. channels-last) keep their own gradients and are copied.
  bool gradient_as_bucket_view = true;
  /// How long any collective may wait for the other ranks (Fabric's default, 30 minutes).
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
  /// "" picks "nccl" for CUDA devices and "gloo" for CPUs.
  std::string process_group_backend = "";
};

class DDPStrategy : public Strategy {
 public:
  explicit DDPStrategy(DDPOptions options = {});
  ~DDPStrategy() override;
  /// Registers "ddp" and "ddp_find_unused_parameters_true", as Python does.
  static void register_strategies(StrategyRegistry& registry);

  std::string name() const override;
  bool is_parallel() const override { return true; }
  const DDPOptions& options() const { return options_; }
  /// The process group, once setup_environment() has run (null before).
  const std::shared_ptr<collectives::ProcessGroup>& process_group() const { return group_; }
  /// "nccl" or "gloo": what setup_environment() uses.
  std::string process_group_backend() const;

  c10::Device root_device() const override;
  int global_rank() const override;
  int local_rank() const override;
  int node_rank() const override;
  int world_size() const override;
  int num_processes() const { return static_cast<int>(parallel_devices_.size()); }
  std::optional<DistributedSamplerArgs> distributed_sampler_kwargs() const override;

  void set_world_ranks() override;
  std::shared_ptr<launchers::Launcher> launcher() override;
  void setup_environment() override;
  std::shared_ptr<torch::nn::Module> setup_module(
      std::shared_ptr<torch::nn::Module> module) override;
  Guard forward_context(torch::nn::Module& module) override;
  Guard no_backward_sync(torch::nn::Module& module, bool enabled) override;

  void barrier(const std::string& name = "") override;
  void barrier_with_timeout(const std::string& name, std::chrono::milliseconds timeout) override;
  at::Tensor broadcast(const at::Tensor& tensor, int src = 0) override;
  at::Tensor all_gather(const at::Tensor& tensor, bool sync_grads = false) override;
  at::Tensor all_reduce(const at::Tensor& tensor,
                        collectives::ReduceKind op = collectives::ReduceKind::Avg) override;
  void teardown() override;

 private:
  struct Wrapped;
  Wrapped* find(const torch::nn::Module& module) const;
  bool distributed() const { return group_ && group_->world_size() > 1; }

  DDPOptions options_;
  std::shared_ptr<collectives::ProcessGroup> group_;
  std::shared_ptr<launchers::Launcher> launcher_;
  std::vector<std::unique_ptr<Wrapped>> wrapped_;
};

}  // namespace cppfabric::strategies
