#include "cppfabric/strategies/fsdp.hpp"

#include <torch/torch.h>

#include <stdexcept>
#include <unordered_map>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/strategies/fsdp_unit.hpp"
#include "cppfabric/strategies/registry.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
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
// Python applies the policy to any submodule; here only declared inner units can be selected, so a
// policy that selects none of them is most likely a mistake.
void warn_if_nothing_checkpointed(const std::vector<std::pair<std::string, bool>>& units) {
  std::string names;
  for (const auto& [name, selected] : units) {
    if (selected) return;
    names.append(names.empty() ? "'" : ", '").append(name).append("'");
  }
  utilities::rank_zero_warn(
      units.empty()
          ? std::string("FSDPOptions: activation_checkpointing_policy is set, but the module "
                        "declares no inner units: only FSDPUnit<...> submodules can recompute "
                        "their activations. Nothing is checkpointed.")
          : fmt::format("FSDPOptions: activation_checkpointing_policy selected none of the "
                        "inner units ({}). Nothing is checkpointed.",
                        names));
}

DDPOptions ddp_options(const FSDPOptions& o) {
  DDPOptions d;
  d.broadcast_buffers = false;
  d.timeout = o.timeout;
  d.process_group_backend = o.process_group_backend;
  return d;
}

void check_float_dtype(const char* field, const std::optional<c10::ScalarType>& dtype) {
  if (!dtype) return;
  const auto t = *dtype;
  if (t == c10::kFloat || t == c10::kDouble || t == c10::kHalf || t == c10::kBFloat16) return;
  throw std::invalid_argument(fmt::format(
      "FSDPMixedPrecision: {} is {}, which is not a floating-point dtype. Valid choices: "
      "torch::kFloat32, torch::kFloat64, torch::kFloat16, torch::kBFloat16 (or leave it unset).",
      field, c10::toString(t)));
}

bool hybrid(const std::string& s) { return s == "HYBRID_SHARD" || s == "_HYBRID_SHARD_ZERO2"; }

// The discovered inner units of the module being set up, in module order, with their names and
// whether activation_checkpointing_policy selected them.
thread_local std::vector<FSDPUnitBase*> pending_units;
thread_local std::vector<std::pair<std::string, bool>> pending_configs;
}  // namespace

FSDPStrategy::FSDPStrategy(FSDPOptions options)
    : ShardingStrategy(ddp_options(options)), options_(std::move(options)) {
  const auto& s = options_.sharding_strategy;
  if (s != "FULL_SHARD" && s != "SHARD_GRAD_OP" && s != "NO_SHARD" && !hybrid(s)) {
    throw std::invalid_argument(fmt::format(
        "FSDPOptions: sharding_strategy '{}' is not valid. Valid choices: 'FULL_SHARD' (default), "
        "'SHARD_GRAD_OP', 'NO_SHARD', 'HYBRID_SHARD', '_HYBRID_SHARD_ZERO2'.",
        s));
  }
  if (const auto& mp = options_.mixed_precision) {
    check_float_dtype("param_dtype", mp->param_dtype);
    check_float_dtype("reduce_dtype", mp->reduce_dtype);
    check_float_dtype("buffer_dtype", mp->buffer_dtype);
  }
  const auto& mesh = options_.device_mesh;
  if (!mesh.empty()) {
    if (!hybrid(s)) {
      throw std::invalid_argument(fmt::format(
          "FSDPOptions: device_mesh {{{}}} is only valid with sharding_strategy 'HYBRID_SHARD' or "
          "'_HYBRID_SHARD_ZERO2', got '{}'.",
          fmt::join(mesh, ", "), s));
    }
    if (mesh.size() != 2 || mesh[0] < 1 || mesh[1] < 1) {
      throw std::invalid_argument(fmt::format(
          "FSDPOptions: device_mesh {{{}}} is not valid: give two positive sizes, {{replication "
          "size, sharding size}}, whose product is the world size (e.g. {{2, 4}} for 8 "
          "processes).",
          fmt::join(mesh, ", ")));
    }
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
  // Each trainable parameter belongs to the innermost declared unit that contains it.
  std::unordered_map<const void*, std::size_t> owner;
  pending_units.clear();
  pending_configs.clear();
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
    const auto& policy = options_.activation_checkpointing_policy;
    pending_configs.emplace_back(item.key(), policy && policy(item.key(), *item.value()));
  }
  if (options_.activation_checkpointing_policy) warn_if_nothing_checkpointed(pending_configs);
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
  config.reshard_after_forward = s == "FULL_SHARD" || s == "HYBRID_SHARD";
  // Each unit's gradient collective runs while backward continues; finalize waits for them
  // before the optimizer can see the shard gradients (as Python FSDP's post-backward stream).
  config.overlap = true;
  if (const auto& mp = options_.mixed_precision) {
    config.param_dtype = mp->param_dtype;
    config.reduce_dtype = mp->reduce_dtype;
  }
  // CPU devices keep everything in host memory already: offloading changes nothing there.
  if (offloads()) config.compute_device = root_device();
}

bool FSDPStrategy::offloads() const { return options_.cpu_offload && root_device().is_cuda(); }

void FSDPStrategy::module_to_device(torch::nn::Module& module) {
  if (!offloads()) {
    ShardingStrategy::module_to_device(module);
    return;
  }
  // Python's CPUOffload(offload_params=True): the trainable parameters stay in host memory (their
  // shards are taken there; only one unit at a time is copied to the device); buffers and frozen
  // parameters, which are not sharded, go to the device the forward runs on.
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    const auto target = p.requires_grad() ? c10::Device(c10::kCPU) : root_device();
    if (p.device() != target) p.set_data(p.to(target));
  }
  for (auto& b : module.buffers()) {
    if (b.device() != root_device()) b.set_data(b.to(root_device()));
  }
}

std::optional<c10::ScalarType> FSDPStrategy::buffer_dtype() const {
  return options_.mixed_precision ? options_.mixed_precision->buffer_dtype : std::nullopt;
}

at::Tensor FSDPStrategy::convert_input(torch::nn::Module& module, const at::Tensor& input) {
  const auto& mp = options_.mixed_precision;
  if (!mp || !mp->param_dtype || !mp->cast_root_forward_inputs || !input.defined() ||
      !input.is_floating_point() || input.scalar_type() == *mp->param_dtype ||
      !sharded_for(module)) {
    return input;
  }
  return input.to(*mp->param_dtype);
}

int FSDPStrategy::shard_group_size() const {
  if (!hybrid(options_.sharding_strategy)) return 0;
  const auto& mesh = options_.device_mesh;
  if (mesh.empty()) return num_processes();  // one shard group per node, as torch's FSDP
  if (mesh[0] * mesh[1] != world_size()) {
    throw std::invalid_argument(fmt::format(
        "FSDPOptions: device_mesh {{{}, {}}} has {} x {} = {} ranks, but the world size is {} "
        "(num_nodes {} x devices {}). The product of replication size and sharding size must "
        "equal the world size.",
        mesh[0], mesh[1], mesh[0], mesh[1], mesh[0] * mesh[1], world_size(), num_nodes(),
        num_processes()));
  }
  return mesh[1];
}

void FSDPStrategy::after_sharding(torch::nn::Module&, detail::ShardedModule& sharded) {
  for (std::size_t u = 0; u < pending_units.size(); ++u) {
    pending_units[u]->fsdp_bind(&sharded, u + 1, sharded.liveness());
    pending_units[u]->fsdp_configure(pending_configs.at(u).first, pending_configs.at(u).second);
  }
  pending_units.clear();
  pending_configs.clear();
}

}  // namespace cppfabric::strategies
