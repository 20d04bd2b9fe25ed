#include "cppfabric/strategies/fsdp.hpp"

#include <torch/torch.h>

#include <stdexcept>
#include <unordered_map>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/strategies/fsdp_unit.hpp"
#include "cppfabric/strategies/registry.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "strategies/sharding.hpp"

namespace cppfabric::strategies {

// ------------------------------------------------------------------ FSDPUnitBase

FSDPUnitBase::~FSDPUnitBase() = default;

void FSDPUnitBase::fsdp_bind(detail::ShardedModule* owner, std::size_t index,
                             std::weak_ptr<void> alive) {
  owner_ = owner;
  index_ = index;
  alive_ = std::move(alive);
}

void FSDPUnitBase::fsdp_before_forward() {
  if (auto* owner = live_owner()) owner->before_unit_forward(index_);
}

at::Tensor FSDPUnitBase::fsdp_after_forward(const at::Tensor& output) {
  auto* owner = live_owner();
  return owner ? owner->after_unit_forward(index_, output) : output;
}

void FSDPUnitBase::fsdp_after_forward_untracked() {
  if (auto* owner = live_owner()) owner->after_unit_forward_untracked(index_);
}

// ------------------------------------------------------------------ FSDPStrategy

namespace {
DDPOptions ddp_options(const FSDPOptions& o) {
  DDPOptions d;
  d.broadcast_buffers = false;
  d.timeout = o.timeout;
  d.process_group_backend = o.process_group_backend;
  return d;
}

// The discovered inner units of the module being set up, in module order.
thread_local std::vector<FSDPUnitBase*> pending_units;
}  // namespace

FSDPStrategy::FSDPStrategy(FSDPOptions options)
    : ShardingStrategy(ddp_options(options)), options_(std::move(options)) {
  const auto& s = options_.sharding_strategy;
  if (s == "HYBRID_SHARD" || s == "_HYBRID_SHARD_ZERO2") {
    throw NotYetAvailableError(fmt::format(
        "FSDPOptions: sharding_strategy '{}' shards within a node and replicates across nodes, "
        "which needs a two-level process group that cppfabric does not build yet. Use "
        "'FULL_SHARD', 'SHARD_GRAD_OP' or 'NO_SHARD'.",
        s));
  }
  if (s != "FULL_SHARD" && s != "SHARD_GRAD_OP" && s != "NO_SHARD") {
    throw std::invalid_argument(fmt::format(
        "FSDPOptions: sharding_strategy '{}' is not valid. Valid choices: 'FULL_SHARD' (default), "
        "'SHARD_GRAD_OP', 'NO_SHARD' ('HYBRID_SHARD' is recognised but not yet available).",
        s));
  }
  if (options_.state_dict_type != "sharded" && options_.state_dict_type != "full") {
    throw std::invalid_argument(fmt::format(
        "FSDPOptions: state_dict_type '{}' is not valid. Valid choices: 'sharded' (default), "
        "'full'.",
        options_.state_dict_type));
  }
}

FSDPStrategy::~FSDPStrategy() = default;

void FSDPStrategy::register_strategies(StrategyRegistry& registry) {
  registry.register_strategy(
      "fsdp", [] { return std::make_shared<FSDPStrategy>(); },
      "Fully Sharded Data Parallel (FSDP) training");
  registry.register_strategy(
      "fsdp_cpu_offload",
      [] { return std::make_shared<FSDPStrategy>(FSDPOptions{.cpu_offload = true}); },
      "Fully Sharded Data Parallel (FSDP) training with Full Sharding and CPU Offloading");
}

std::string FSDPStrategy::name() const {
  return options_.cpu_offload ? "fsdp_cpu_offload" : "fsdp";
}

std::vector<ShardingStrategy::UnitParams> FSDPStrategy::partition(torch::nn::Module& module) {
  if (options_.cpu_offload && root_device().is_cuda()) {
    throw NotYetAvailableError(
        "FSDP's cpu_offload with CUDA devices (parameters kept in host memory and copied to the "
        "GPU per unit) is not available yet. On CPU devices strategy='fsdp' already keeps "
        "everything in host memory; on GPUs use strategy='fsdp'.");
  }
  // Each trainable parameter belongs to the innermost declared unit that contains it.
  std::unordered_map<const void*, std::size_t> owner;
  pending_units.clear();
  const auto modules = module.named_modules("", /*include_self=*/false);
  std::vector<std::pair<std::string, torch::nn::Module*>> units;
  for (const auto& item : modules) {
    auto* unit = dynamic_cast<FSDPUnitBase*>(item.value().get());
    if (!unit) continue;
    if (unit->fsdp_bound()) {
      throw std::invalid_argument(fmt::format(
          "FSDP unit '{}' is already bound to another set-up module: a unit may belong to one "
          "module only.",
          item.key()));
    }
    pending_units.push_back(unit);
    units.emplace_back(item.key(), item.value().get());
  }
  // named_modules lists parents before children: later (deeper) units override.
  for (std::size_t u = 0; u < units.size(); ++u) {
    for (const auto& p : units[u].second->parameters()) owner[p.unsafeGetTensorImpl()] = u + 1;
  }
  std::vector<UnitParams> out(units.size() + 1);
  for (const auto& item : module.named_parameters()) {
    const auto& p = item.value();
    if (!p.requires_grad()) continue;
    auto it = owner.find(p.unsafeGetTensorImpl());
    out[it == owner.end() ? 0 : it->second].emplace_back(item.key(), p);
  }
  return out;
}

void FSDPStrategy::configure(detail::ShardingConfig& config) const {
  const auto& s = options_.sharding_strategy;
  config.layout = detail::ParamLayout::Swap;
  config.shard_params = s != "NO_SHARD";
  config.reduce =
      s == "NO_SHARD" ? detail::GradReduce::AllReduce : detail::GradReduce::ReduceScatter;
  config.reshard_after_forward = s == "FULL_SHARD";
  // Each unit's gradient collective runs while backward continues; finalize waits for them
  // before the optimizer can see the shard gradients (as Python FSDP's post-backward stream).
  config.overlap = true;
}

void FSDPStrategy::after_sharding(torch::nn::Module&, detail::ShardedModule& sharded) {
  for (std::size_t u = 0; u < pending_units.size(); ++u) {
    pending_units[u]->fsdp_bind(&sharded, u + 1, sharded.liveness());
  }
  pending_units.clear();
}

}  // namespace cppfabric::strategies
