// ZeROStrategy: cppfabric's own ZeRO (the optimizer sharding of DeepSpeed's ZeRO paper) for
// `strategy="deepspeed"` (stage 2, DeepSpeed's default), "deepspeed_stage_1" and
// "deepspeed_stage_2". Every process keeps the whole model; the optimizer and its state see only
// this process's 1/N shard; stage 2 also reduce-scatters gradients during backward (bucketed, the
// collectives overlap the backward pass) so each process keeps only its shard's gradient,
// stage 1 all-reduces them. After optimizer.step() the updated shards are all-gathered.
//
//   Fabric fabric({.accelerator = "cpu", .strategy = "deepspeed_stage_2", .devices = 2});
//   fabric.launch();
//   auto [net, opt] = fabric.setup(model, optimizer);  // opt now holds this rank's shards
//
// This is NOT the DeepSpeed library: no ds_config file or dict, no CPU/NVMe offload, no stage 3
// (use strategy="fsdp"); those options throw cppfabric::NotSupportedError saying so.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "cppfabric/strategies/sharding.hpp"

namespace cppfabric::strategies {

struct ZeROOptions {
  /// 1 (optimizer state sharded) or 2 (gradients too). 3 is FSDP's FULL_SHARD: use "fsdp".
  int stage = 2;
  /// Stage 2: reduce-scatter (true, DeepSpeed's default) or all-reduce the gradients.
  bool reduce_scatter = true;
  /// Overlap the gradient collectives with backward (DeepSpeed's overlap_comm, default true).
  bool overlap_comm = true;
  /// Elements per gradient bucket (DeepSpeed's reduce_bucket_size, default 2e8).
  int64_t reduce_bucket_size = 200'000'000;
  /// DeepSpeed-only settings, kept so ported code fails clearly: any non-empty/true value throws.
  std::string config = "";
  bool offload_optimizer = false;
  bool offload_parameters = false;
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
  std::string process_group_backend = "";
};

class ZeROStrategy : public ShardingStrategy {
 public:
  explicit ZeROStrategy(ZeROOptions options = {});
  ~ZeROStrategy() override;
  /// Registers "deepspeed", "deepspeed_stage_1" and "deepspeed_stage_2".
  static void register_strategies(StrategyRegistry& registry);

  std::string name() const override;
  const ZeROOptions& zero_options() const { return options_; }

 protected:
  std::vector<UnitParams> partition(torch::nn::Module& module) override;
  void configure(detail::ShardingConfig& config) const override;

 private:
  ZeROOptions options_;
};

}  // namespace cppfabric::strategies
