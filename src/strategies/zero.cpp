#include "cppfabric/strategies/zero.hpp"

#include <torch/torch.h>

#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/strategies/registry.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "strategies/sharding.hpp"

namespace cppfabric::strategies {

namespace {
DDPOptions ddp_options(const ZeROOptions& o) {
  DDPOptions d;
  d.broadcast_buffers = false;
  d.timeout = o.timeout;
  d.process_group_backend = o.process_group_backend;
  return d;
}

const char* kNotDeepSpeed =
    "cppfabric's ZeRO is its own C++ implementation of ZeRO stages 1 and 2, not the DeepSpeed "
    "library";
}  // namespace

ZeROStrategy::ZeROStrategy(ZeROOptions options)
    : ShardingStrategy(ddp_options(options)), options_(std::move(options)) {
  if (options_.stage == 3) {
    throw NotSupportedError(fmt::format(
        "ZeROOptions: stage 3 is not offered: {}. ZeRO stage 3 (parameters sharded too) is FSDP's "
        "FULL_SHARD: use strategy='fsdp'.",
        kNotDeepSpeed));
  }
  if (options_.stage != 1 && options_.stage != 2) {
    throw std::invalid_argument(fmt::format(
        "ZeROOptions: stage {} is not valid. Valid choices: 1, 2 (3 is strategy='fsdp').",
        options_.stage));
  }
  if (!options_.config.empty()) {
    throw NotSupportedError(fmt::format(
        "ZeROOptions: config '{}' was given, but {}: it reads no DeepSpeed config file or dict. "
        "Set stage, reduce_bucket_size and overlap_comm in ZeROOptions instead.",
        options_.config, kNotDeepSpeed));
  }
  if (options_.offload_optimizer || options_.offload_parameters) {
    throw NotSupportedError(fmt::format(
        "ZeROOptions: offload_optimizer/offload_parameters were set, but {}: it has no CPU/NVMe "
        "offload engine. Use strategy='fsdp_cpu_offload', or train on CPU devices.",
        kNotDeepSpeed));
  }
  if (options_.reduce_bucket_size <= 0) {
    throw std::invalid_argument(fmt::format(
        "ZeROOptions: reduce_bucket_size must be positive, got {}.", options_.reduce_bucket_size));
  }
}

ZeROStrategy::~ZeROStrategy() = default;

void ZeROStrategy::register_strategies(StrategyRegistry& registry) {
  registry.register_strategy(
      "deepspeed", [] { return std::make_shared<ZeROStrategy>(); },
      "ZeRO stage 2 (cppfabric's own; DeepSpeed's default stage)");
  registry.register_strategy(
      "deepspeed_stage_1", [] { return std::make_shared<ZeROStrategy>(ZeROOptions{.stage = 1}); },
      "ZeRO stage 1: optimizer state sharded across processes");
  registry.register_strategy(
      "deepspeed_stage_2", [] { return std::make_shared<ZeROStrategy>(ZeROOptions{.stage = 2}); },
      "ZeRO stage 2: optimizer state and gradients sharded across processes");
}

std::string ZeROStrategy::name() const {
  return options_.stage == 1 ? "deepspeed_stage_1" : "deepspeed_stage_2";
}

std::vector<ShardingStrategy::UnitParams> ZeROStrategy::partition(torch::nn::Module& module) {
  // Buckets in reverse registration order (roughly the order backward produces gradients), as
  // the DDP reducer; one bucket per dtype run. Unit 0 (FSDP's outer unit) stays empty.
  std::vector<UnitParams> out(1);
  UnitParams current;
  int64_t elements = 0;
  auto items = module.named_parameters();
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& item : items) {
    if (item.value().requires_grad()) params.emplace_back(item.key(), item.value());
  }
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    if (!current.empty() && (current.front().second.scalar_type() != it->second.scalar_type() ||
                             current.front().second.device() != it->second.device() ||
                             elements >= options_.reduce_bucket_size)) {
      out.push_back(std::move(current));
      current.clear();
      elements = 0;
    }
    elements += it->second.numel();
    current.push_back(*it);
  }
  if (!current.empty()) out.push_back(std::move(current));
  return out;
}

void ZeROStrategy::configure(detail::ShardingConfig& config) const {
  config.layout = detail::ParamLayout::Replicated;
  config.shard_params = true;
  config.reduce = options_.stage == 2 && options_.reduce_scatter ? detail::GradReduce::ReduceScatter
                                                                 : detail::GradReduce::AllReduce;
  config.reshard_after_forward = false;
  config.overlap = options_.overlap_comm;
}

}  // namespace cppfabric::strategies
