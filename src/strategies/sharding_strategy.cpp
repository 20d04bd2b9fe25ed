#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include "checkpoint/adapters.hpp"
#include "cppfabric/checkpoint/checkpoint_io.hpp"
#include "cppfabric/checkpoint/sharded.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/precision/mixed.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/state.hpp"
#include "cppfabric/strategies/sharding.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "strategies/ddp_reducer.hpp"
#include "strategies/sharding.hpp"

namespace cppfabric::strategies {

struct ShardingStrategy::Entry {
  std::shared_ptr<torch::nn::Module> module;
  std::unique_ptr<detail::ShardedModule> sharded;
  /// Buffers cast by buffer_dtype(), with their original dtypes.
  std::vector<std::pair<at::Tensor, c10::ScalarType>> cast_buffers;
};

namespace {
// Changes a buffer's dtype in place (the module keeps the same tensor).
void set_dtype(at::Tensor buffer, c10::ScalarType dtype) { buffer.set_data(buffer.to(dtype)); }
}  // namespace

ShardingStrategy::ShardingStrategy(DDPOptions ddp) : DDPStrategy(std::move(ddp)) {}
ShardingStrategy::~ShardingStrategy() = default;

void ShardingStrategy::setup_environment() {
  DDPStrategy::setup_environment();
  const auto& group = process_group();
  if (!group || shard_group_) return;
  const int world = group->world_size();
  const int size = shard_group_size();
  if (size <= 0 || size >= world) return;  // one shard group: the whole world
  if (world % size != 0) {
    throw std::invalid_argument(fmt::format(
        "{}: a shard group of {} ranks does not divide the world size {}: every replica must "
        "hold the same shards.",
        name(), size, world));
  }
  // As torch's DeviceMesh (replicas, shard size): shard groups are consecutive ranks (a node
  // under the default layout); a replicate group takes the ranks at one position in each.
  const int replicas = world / size;
  std::vector<std::vector<int>> shard_lists(static_cast<std::size_t>(replicas));
  std::vector<std::vector<int>> replica_lists(static_cast<std::size_t>(size));
  for (int r = 0; r < world; ++r) {
    shard_lists[static_cast<std::size_t>(r / size)].push_back(r);
    replica_lists[static_cast<std::size_t>(r % size)].push_back(r);
  }
  shard_group_ = group->new_subgroups(shard_lists);
  replicate_group_ = group->new_subgroups(replica_lists);
}

std::shared_ptr<collectives::ProcessGroup> ShardingStrategy::shard_group() const {
  return shard_group_ ? shard_group_ : process_group();
}

detail::ShardedModule* ShardingStrategy::sharded_for(const torch::nn::Module& module) const {
  for (const auto& e : entries_) {
    if (e->module.get() == &module) return e->sharded.get();
  }
  return nullptr;
}

std::shared_ptr<torch::nn::Module> ShardingStrategy::setup_module(
    std::shared_ptr<torch::nn::Module> module) {
  const auto& group = process_group();
  if (!group) {
    throw std::runtime_error(fmt::format(
        "{}: setup_module needs the process group: call `fabric.launch()` first.", name()));
  }
  if (sharded_for(*module)) {
    throw std::invalid_argument(
        fmt::format("This module is already set up with the {} strategy.", name()));
  }
  if (group->world_size() > 1) {
    // FSDP's cpu_offload leaves the trainable parameters in host memory: NCCL sends them through
    // the device.
    const auto via =
        root_device().is_cuda() ? std::optional<c10::Device>(root_device()) : std::nullopt;
    cppfabric::detail::broadcast_coalesced(*group, cppfabric::detail::module_states(*module), 0,
                                           via);
  }
  detail::ShardingConfig config;
  config.strategy_name = name();
  configure(config);
  config.replicate_group = replicate_group_;
  // Gloo's reduce_scatter on CPU is much slower than its all_reduce (torch 2.11, 2 ranks, 134 MB:
  // 282 ms against 150 ms; all_gather 204 ms), so on Gloo the gradient reduce-scatter runs as an
  // all-reduce of the (already full-size, transient) flat buffer followed by taking this rank's
  // chunk: the same result, and each rank still keeps only its shard's gradient. NCCL
  // reduce-scatters.
  if (group->backend() == "gloo" && config.reduce == detail::GradReduce::ReduceScatter) {
    config.reduce = detail::GradReduce::AllReduce;
  }
  auto entry = std::make_unique<Entry>();
  entry->module = module;
  entry->sharded =
      std::make_unique<detail::ShardedModule>(partition(*module), shard_group(), config);
  after_sharding(*module, *entry->sharded);
  if (const auto dtype = buffer_dtype()) {
    torch::NoGradGuard no_grad;
    for (auto& b : module->buffers()) {
      if (!b.is_floating_point() || b.scalar_type() == *dtype) continue;
      entry->cast_buffers.emplace_back(b, b.scalar_type());
      set_dtype(b, *dtype);
    }
  }
  entries_.push_back(std::move(entry));
  return module;
}

void ShardingStrategy::setup_optimizer(torch::optim::Optimizer& optimizer) {
  if (!optimizer.state().empty()) {
    throw std::invalid_argument(fmt::format(
        "The optimizer passed to the {} strategy already has state (it has taken a step): its "
        "state has the parameters' full shapes, but it must only ever see this rank's shards. "
        "Create the optimizer after `fabric.setup_module(model)` and before any step.",
        name()));
  }
  bool any = false;
  for (auto& group : optimizer.param_groups()) {
    for (auto& param : group.params()) {
      for (const auto& e : entries_) {
        auto shard = e->sharded->shard_variable_for(param);
        if (shard.defined()) {
          param = shard;  // ZeRO: the optimizer now updates this rank's shard
          any = true;
          break;
        }
      }
    }
  }
  if (!any) {
    throw std::invalid_argument(fmt::format(
        "The optimizer does not seem to reference any {} parameters. HINT: Make sure to create "
        "the optimizer after setting up the model by referencing `model->parameters()` of the "
        "module `fabric.setup_module` returned.",
        name()));
  }
}

Guard ShardingStrategy::forward_context(torch::nn::Module& module) {
  auto* sharded = sharded_for(module);
  if (!sharded) return {};
  sharded->before_outer_forward();
  return Guard([sharded] { sharded->after_outer_forward(torch::GradMode::is_enabled()); });
}

at::Tensor ShardingStrategy::convert_output(torch::nn::Module& module, const at::Tensor& output) {
  auto* sharded = sharded_for(module);
  return sharded ? sharded->after_outer_output(output) : output;
}

void ShardingStrategy::backward(const at::Tensor& tensor, const at::Tensor& gradient,
                                std::optional<bool> retain_graph, bool create_graph) {
  try {
    DDPStrategy::backward(tensor, gradient, retain_graph, create_graph);
  } catch (...) {
    for (const auto& e : entries_) e->sharded->discard_failed_backward();
    throw;
  }
}

Guard ShardingStrategy::no_backward_sync(torch::nn::Module& module, bool enabled) {
  auto* sharded = sharded_for(module);
  if (!sharded) {
    throw TypeError(fmt::format(
        "Blocking backward sync is only possible if the module passed to "
        "`{}.no_backward_sync` was set up with this strategy. Got a {} that was not passed "
        "through `fabric.setup()`.",
        name(), module.name()));
  }
  if (!enabled) return {};
  const bool previous = sharded->require_sync();
  sharded->set_require_sync(false);
  return Guard([sharded, previous] { sharded->set_require_sync(previous); });
}

void ShardingStrategy::agree_on_infs(torch::optim::Optimizer& optimizer) {
  auto* mixed = dynamic_cast<precision::MixedPrecision*>(precision_.get());
  if (!mixed || !mixed->scaler() || !mixed->scaler()->is_enabled()) return;
  bool sharded = false;
  for (const auto& e : entries_) sharded = sharded || e->sharded->sharded();
  if (!sharded) return;  // every rank holds whole, identical gradients
  if (std::find(agreed_.begin(), agreed_.end(), &optimizer) != agreed_.end()) return;
  agreed_.push_back(&optimizer);
  torch::NoGradGuard no_grad;
  const auto device = cppfabric::detail::collective_device(root_device());
  at::Tensor found = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  at::Tensor first;
  for (auto& group : optimizer.param_groups()) {
    for (auto& param : group.params()) {
      const auto& grad = param.grad();
      if (!grad.defined() || grad.numel() == 0) continue;
      if (!first.defined()) first = grad;
      found = torch::maximum(found,
                             torch::logical_not(torch::isfinite(grad)).any().to(found.options()));
    }
  }
  const bool here = found.item<float>() > 0;
  process_group()->all_reduce(found, collectives::ReduceKind::Max);
  if (!here && found.item<float>() > 0 && first.defined()) {
    first.view({-1}).narrow(0, 0, 1).fill_(std::numeric_limits<float>::infinity());
  }
}

void ShardingStrategy::optimizer_step(torch::optim::Optimizer& optimizer) {
  agree_on_infs(optimizer);
  std::erase(agreed_, static_cast<const void*>(&optimizer));
  DDPStrategy::optimizer_step(optimizer);
  for (const auto& e : entries_) e->sharded->after_optimizer_step();
}

void ShardingStrategy::clip_gradients_value(torch::optim::Optimizer& optimizer, double clip_val) {
  agree_on_infs(optimizer);
  DDPStrategy::clip_gradients_value(optimizer, clip_val);
}

at::Tensor ShardingStrategy::clip_gradients_norm(torch::optim::Optimizer& optimizer,
                                                 double max_norm, double norm_type,
                                                 bool error_if_nonfinite) {
  bool sharded = false;
  for (const auto& e : entries_) sharded = sharded || e->sharded->sharded();
  if (!sharded) {
    return DDPStrategy::clip_gradients_norm(optimizer, max_norm, norm_type, error_if_nonfinite);
  }
  agree_on_infs(optimizer);
  precision_->unscale_gradients(optimizer);
  std::vector<at::Tensor> grads;
  for (auto& group : optimizer.param_groups()) {
    for (auto& param : group.params()) {
      if (param.grad().defined()) grads.push_back(param.grad());
    }
  }
  const bool inf_norm = std::isinf(norm_type);
  // This rank's part of the norm: the max, or the sum of |g|^p over its shards, computed where the
  // shard gradients are (host memory under FSDP's cpu_offload); the collective's device may differ.
  const auto device = cppfabric::detail::collective_device(root_device());
  const auto grad_device = grads.empty() ? device : grads.front().device();
  at::Tensor local =
      torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(grad_device));
  for (const auto& g : grads) {
    if (g.numel() == 0) continue;
    if (inf_norm) {
      local = torch::maximum(local, g.detach().abs().max().to(local.options()));
    } else {
      local = local +
              torch::linalg_vector_norm(g.detach(), norm_type, std::nullopt, false, torch::kFloat32)
                  .pow(norm_type)
                  .to(local.options());
    }
  }
  // Over the shard group only: under HYBRID_SHARD the other replicas hold the same shards.
  at::Tensor reduced = local.to(device);
  shard_group()->all_reduce(reduced,
                            inf_norm ? collectives::ReduceKind::Max : collectives::ReduceKind::Sum);
  local = reduced.to(grad_device);
  at::Tensor total = inf_norm ? local : local.pow(1.0 / norm_type);
  if (error_if_nonfinite && !torch::isfinite(total).item<bool>()) {
    throw std::runtime_error(fmt::format(
        "The total norm of order {} for gradients is non-finite, so it cannot be clipped. Pass "
        "error_if_nonfinite=false to clip_gradients to skip this check.",
        norm_type));
  }
  auto coef = torch::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0);
  for (const auto& g : grads) g.detach().mul_(coef.to(g.device(), g.scalar_type()));
  return total;
}

void ShardingStrategy::teardown() {
  entries_.clear();
  replicate_group_.reset();
  shard_group_.reset();
  DDPStrategy::teardown();
}

namespace {
detail::ShardedModule& require(detail::ShardedModule* sharded, const std::string& strategy,
                               const torch::nn::Module& module) {
  if (!sharded) {
    throw std::invalid_argument(
        fmt::format("The module {} was not set up with the {} strategy: pass the module that "
                    "`fabric.setup` was given (net.module()).",
                    module.name(), strategy));
  }
  return *sharded;
}
}  // namespace

Guard ShardingStrategy::summon_full_params(torch::nn::Module& module) {
  return require(sharded_for(module), name(), module).summon_full_params();
}

ShardingMemory ShardingStrategy::memory_stats(torch::nn::Module& module) const {
  return require(sharded_for(module), name(), module).memory();
}

void ShardingStrategy::reset_peak_memory(torch::nn::Module& module) {
  require(sharded_for(module), name(), module).reset_peak_memory();
}

std::size_t ShardingStrategy::num_units(torch::nn::Module& module) const {
  return require(sharded_for(module), name(), module).num_units();
}

// ------------------------------------------------------------------ checkpoints

namespace {

using checkpoint::ShardedItem;
using checkpoint::TensorShard;
using Member = detail::ShardedModule::MemberInfo;

// A contiguous range [begin, end) of a row-major tensor of shape `shape` as rectangles, each
// contiguous in memory: (offsets, sizes, position of its first element in the range).
struct Rect {
  std::vector<int64_t> offsets, sizes;
  int64_t start = 0;
};

void split_range(int64_t begin, int64_t end, const std::vector<int64_t>& shape, std::size_t dim,
                 std::vector<int64_t> prefix, int64_t base, std::vector<Rect>& out) {
  if (begin >= end) return;
  int64_t stride = 1;
  for (std::size_t d = dim + 1; d < shape.size(); ++d) stride *= shape[d];
  auto emit = [&](int64_t row0, int64_t rows) {
    Rect r;
    r.offsets = prefix;
    r.offsets.push_back(row0);
    r.sizes.assign(prefix.size(), 1);
    r.sizes.push_back(rows);
    for (std::size_t d = dim + 1; d < shape.size(); ++d) {
      r.offsets.push_back(0);
      r.sizes.push_back(shape[d]);
    }
    r.start = base + row0 * stride;
    out.push_back(std::move(r));
  };
  const int64_t first = begin / stride;
  const int64_t last = (end - 1) / stride;
  auto inner = [&](int64_t row, int64_t b, int64_t e) {
    auto p = prefix;
    p.push_back(row);
    split_range(b, e, shape, dim + 1, std::move(p), base + row * stride, out);
  };
  if (first == last && !(begin % stride == 0 && end % stride == 0 && end - begin == stride)) {
    inner(first, begin - first * stride, end - first * stride);
    return;
  }
  int64_t full_begin = first, full_end = last + 1;
  if (begin % stride != 0) {
    inner(first, begin - first * stride, stride);
    full_begin = first + 1;
  }
  const bool partial_tail = end % stride != 0;
  if (partial_tail) full_end = last;
  if (full_begin < full_end) emit(full_begin, full_end - full_begin);
  if (partial_tail) inner(last, 0, end - last * stride);
}

// The rectangles of `range` [from, from + len) of a tensor of shape `sizes` (0-d: one element).
std::vector<Rect> rects_of(const std::vector<int64_t>& sizes, int64_t from, int64_t len) {
  std::vector<Rect> out;
  if (sizes.empty()) {
    if (len > 0) out.push_back(Rect{{}, {}, 0});
    return out;
  }
  split_range(from, from + len, sizes, 0, {}, 0, out);
  // Rect::start is relative to the tensor; make it relative to the range.
  for (auto& r : out) r.start -= from;
  return out;
}

int64_t numel_of(const std::vector<int64_t>& sizes) {
  int64_t n = 1;
  for (auto s : sizes) n *= s;
  return n;
}

// Items for one range-held tensor: `piece` holds elements [from, from + len) of a tensor of
// `sizes`; `fill` true builds empty locals to load into (the caller copies them back).
void add_piece_items(std::vector<ShardedItem>& items, const std::vector<std::string>& path,
                     const std::vector<int64_t>& sizes, int64_t from, const at::Tensor& piece) {
  for (const auto& r : rects_of(sizes, from, piece.numel())) {
    ShardedItem item;
    item.path = path;
    item.tensor =
        TensorShard{piece.narrow(0, r.start, numel_of(r.sizes)).view(r.sizes), r.offsets, sizes};
    items.push_back(std::move(item));
  }
}

// Items to load `dest` (elements [from, from + dest.numel()) of a tensor of `sizes`): one item per
// rectangle with a fresh local; after load_sharded, dests[i].copy_(items[i] local) for each.
void add_load_items(std::vector<ShardedItem>& items, std::vector<at::Tensor>& dests,
                    const std::vector<std::string>& path, const std::vector<int64_t>& sizes,
                    int64_t from, const at::Tensor& dest) {
  for (const auto& r : rects_of(sizes, from, dest.numel())) {
    ShardedItem item;
    item.path = path;
    item.tensor = TensorShard{torch::empty(r.sizes, dest.options()), r.offsets, sizes};
    items.push_back(std::move(item));
    dests.push_back(dest.narrow(0, r.start, numel_of(r.sizes)));
  }
}

void copy_loaded(const std::vector<ShardedItem>& items, const std::vector<at::Tensor>& dests) {
  for (std::size_t i = 0; i < dests.size(); ++i) {
    if (dests[i].defined()) dests[i].copy_(items[i].tensor->local.reshape(dests[i].sizes()));
  }
}

// Per optimizer: which member each of its parameters is (index into members), in the
// optimizer's numbering.
struct OptimizerMap {
  std::vector<int64_t> member_of;  // per optimizer parameter index: member index or -1
};

OptimizerMap map_optimizer(torch::optim::Optimizer& optimizer, const std::vector<Member>& members) {
  std::unordered_map<const void*, int64_t> by_impl;
  for (std::size_t i = 0; i < members.size(); ++i) {
    by_impl[members[i].shard_var.unsafeGetTensorImpl()] = static_cast<int64_t>(i);
  }
  OptimizerMap map;
  for (auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) {
      auto it = by_impl.find(p.unsafeGetTensorImpl());
      map.member_of.push_back(it == by_impl.end() ? -1 : it->second);
    }
  }
  return map;
}

// The optimizer's param_groups with parameter names in place of indices (Python FSDP's
// optim_state_dict layout).
Value groups_by_name(const Value& sd, const OptimizerMap& map, const std::vector<Member>& members) {
  Value groups = Value::list();
  for (const auto& g : sd.at(Value("param_groups")).elements()) {
    Value copy = g;
    Value names = Value::list();
    for (const auto& id : g.at(Value("params")).elements()) {
      const int64_t m = map.member_of.at(static_cast<std::size_t>(id.to_int()));
      names.elements().push_back(m >= 0 ? Value(members[m].name) : id);
    }
    copy.set(Value("params"), names);
    groups.elements().push_back(std::move(copy));
  }
  return groups;
}

// An optimizer state shaped like the optimizer's tensor for `m` (a 1-D piece, or the whole
// parameter when unsharded), as opposed to a scalar such as "step".
bool is_piece_state(const Value& v, const Member& m) {
  if (v.kind() != Value::Kind::Tensor || m.sizes.empty()) return false;
  const auto& t = v.to_tensor();
  return t.numel() == m.piece_len && t.sizes() == m.shard_var.sizes();
}

}  // namespace

Guard ShardingStrategy::original_buffer_dtypes() {
  const auto dtype = buffer_dtype();
  if (!dtype) return {};
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> restore;
  for (const auto& e : entries_) {
    for (const auto& [buffer, original] : e->cast_buffers) {
      set_dtype(buffer, original);
      restore.push_back(buffer);
    }
  }
  return Guard([restore, dtype = *dtype] {
    torch::NoGradGuard no_grad;
    for (const auto& buffer : restore) set_dtype(buffer, dtype);
  });
}

void ShardingStrategy::save_checkpoint(const std::string& path, const State& state,
                                       const SaveFilter& filter) {
  struct Found {
    std::string key;
    detail::ShardedModule* sharded = nullptr;
    torch::nn::Module* module = nullptr;
    torch::optim::Optimizer* optimizer = nullptr;
  };
  std::vector<Found> found;
  State rest;
  for (const auto& [key, item] : state) {
    Found f;
    f.key = key;
    if (item.is_stateful()) {
      if (auto* m = dynamic_cast<checkpoint::ModuleStateful*>(item.stateful().get())) {
        f.sharded = sharded_for(m->module());
        f.module = &m->module();
      } else if (auto* o = dynamic_cast<checkpoint::OptimizerStateful*>(item.stateful().get())) {
        for (const auto& e : entries_) {
          for (auto& group : o->optimizer().param_groups()) {
            for (const auto& p : group.params()) {
              if (!f.sharded && e->sharded->shard_variable_for(p).defined()) {
                f.sharded = e->sharded.get();
              }
            }
          }
        }
        f.optimizer = &o->optimizer();
      }
    }
    if (f.sharded) {
      found.push_back(f);
    } else {
      rest.set(key, item);
    }
  }
  SaveFilter rest_filter;
  for (const auto& [k, fn] : filter) {
    if (rest.contains(k)) rest_filter[k] = fn;
  }
  Value meta = convert_stateful_objects(rest, rest_filter);
  const bool full = checkpoint_form() == "full";
  const int rank = global_rank();
  torch::NoGradGuard no_grad;
  const Guard buffers = original_buffer_dtypes();

  if (full) {
    Value checkpoint = Value::dict();
    for (const auto& f : found) {
      const auto members = f.sharded->members();
      if (f.module) {
        auto guard = f.sharded->summon_full_params();
        Value sd = checkpoint::ModuleStateful(std::shared_ptr<torch::nn::Module>(
                                                  std::shared_ptr<torch::nn::Module>{}, f.module))
                       .state_dict();
        if (rank == 0) {
          for (auto& [k, v] : sd.items()) {
            if (v.kind() == Value::Kind::Tensor) v = Value(v.to_tensor().detach().clone());
          }
          checkpoint.set(Value(f.key), std::move(sd));
        }
        continue;
      }
      // Optimizer: whole states gathered per key, keyed by parameter name.
      auto sd = checkpoint::OptimizerStateful(
                    std::shared_ptr<torch::optim::Optimizer>(
                        std::shared_ptr<torch::optim::Optimizer>{}, f.optimizer))
                    .state_dict();
      const auto map = map_optimizer(*f.optimizer, members);
      std::map<std::string, std::vector<at::Tensor>> pieces;  // state key -> per member
      std::map<std::string, std::map<int64_t, Value>> scalars;
      for (const auto& [idx, st] : sd.at(Value("state")).items()) {
        const int64_t m = map.member_of.at(static_cast<std::size_t>(idx.to_int()));
        if (m < 0) continue;
        for (const auto& [k, v] : st.items()) {
          if (is_piece_state(v, members[m])) {
            auto& list = pieces[k.to_string()];
            list.resize(members.size());
            list[m] = v.to_tensor();
          } else {
            scalars[k.to_string()][m] = v;
          }
        }
      }
      // Every rank must gather the same keys: agree on them (ranks whose pieces are all empty
      // still hold the keys, as every parameter took the same steps).
      Value named_state = Value::dict();
      std::map<int64_t, Value> per_member;
      for (auto& [k, list] : pieces) {
        list.resize(members.size());
        const auto whole = f.sharded->gather_pieces(list);
        for (std::size_t m = 0; m < members.size(); ++m) {
          if (!list[m].defined()) continue;
          if (!per_member.count(m)) per_member[m] = Value::dict();
          per_member[m].set(Value(k), Value(whole[m]));
        }
      }
      for (auto& [k, by_member] : scalars) {
        for (auto& [m, v] : by_member) {
          if (!per_member.count(m)) per_member[m] = Value::dict();
          per_member[m].set(Value(k), v);
        }
      }
      for (auto& [m, v] : per_member) named_state.set(Value(members[m].name), v);
      const Value groups = groups_by_name(sd, map, members);
      if (rank == 0) {
        checkpoint.set(Value(f.key), Value::dict({{Value("state"), named_state},
                                                  {Value("param_groups"), groups}}));
      }
    }
    if (rank == 0) {
      for (const auto& [k, v] : meta.items()) checkpoint.set(k, v);
      require_checkpoint_io().save_checkpoint(checkpoint, path);
    }
    return;
  }

  // Sharded: every rank its pieces; rank 0 the replicated rest. Under HYBRID_SHARD the first
  // replica (the first shard group) writes the pieces; the others hold the same ones.
  const bool first_replica = !replicate_group_ || replicate_group_->rank() == 0;
  std::vector<ShardedItem> items;
  for (const auto& f : found) {
    const auto members = f.sharded->members();
    const bool pieces_disjoint = f.sharded->sharded();
    const bool mine = first_replica && (pieces_disjoint || shard_group()->rank() == 0);
    if (f.module) {
      std::set<std::string> sharded_names;
      for (const auto& m : members) {
        sharded_names.insert(m.name);
        if (mine) add_piece_items(items, {f.key, m.name}, m.sizes, m.piece_from, m.piece.detach());
      }
      if (rank == 0) {
        auto add_full = [&](const std::string& name, const at::Tensor& t) {
          if (sharded_names.count(name)) return;
          ShardedItem item;
          item.path = {f.key, name};
          item.tensor = TensorShard{t.detach(), std::vector<int64_t>(t.dim(), 0), t.sizes().vec()};
          items.push_back(std::move(item));
        };
        for (const auto& p : f.module->named_parameters()) add_full(p.key(), p.value());
        for (const auto& b : f.module->named_buffers()) add_full(b.key(), b.value());
      }
      continue;
    }
    auto sd =
        checkpoint::OptimizerStateful(std::shared_ptr<torch::optim::Optimizer>(
                                          std::shared_ptr<torch::optim::Optimizer>{}, f.optimizer))
            .state_dict();
    const auto map = map_optimizer(*f.optimizer, members);
    for (const auto& [idx, st] : sd.at(Value("state")).items()) {
      const int64_t m = map.member_of.at(static_cast<std::size_t>(idx.to_int()));
      if (m < 0) continue;
      const auto& mem = members[m];
      for (const auto& [k, v] : st.items()) {
        const std::vector<std::string> p = {f.key, "state", mem.name, k.to_string()};
        if (is_piece_state(v, mem)) {
          if (mine) {
            add_piece_items(items, p, mem.sizes, mem.piece_from, v.to_tensor().reshape({-1}));
          }
        } else if (rank == 0) {
          ShardedItem item;
          item.path = p;
          if (v.kind() == Value::Kind::Tensor) {
            const auto& t = v.to_tensor();
            item.tensor = TensorShard{t, std::vector<int64_t>(t.dim(), 0), t.sizes().vec()};
          } else {
            item.value = v;
          }
          items.push_back(std::move(item));
        }
      }
    }
    if (rank == 0) {
      const Value groups = groups_by_name(sd, map, members);
      // DCP's flattened keys (`optimizer.param_groups.0.lr`, ...), as Python FSDP writes them.
      auto flat = checkpoint::flatten_state(
          Value::dict({{Value(f.key), Value::dict({{Value("param_groups"), groups}})}}));
      for (auto& item : flat) items.push_back(std::move(item));
    }
  }
  checkpoint::save_sharded(path, items, &meta, process_group().get());
}

State ShardingStrategy::load_checkpoint(const std::string& path, State& state, bool strict) {
  const bool sharded_dir = checkpoint::is_sharded_checkpoint(path);
  Value file;  // the whole file ("full" form) or meta.pt's entries
  std::optional<checkpoint::ShardedMetadata> metadata;
  if (sharded_dir) {
    metadata = checkpoint::read_sharded_metadata(path);
    file = metadata->has_meta ? require_checkpoint_io().load_checkpoint(path + "/meta.pt")
                              : Value::dict();
  } else {
    file = require_checkpoint_io().load_checkpoint(path);
  }
  if (!file.is_dict()) {
    throw std::runtime_error(
        fmt::format("The checkpoint {} holds a {}, not a dict of states.", path, file.type_name()));
  }
  auto saved_tensor_shape =
      [&](const std::vector<std::string>& p) -> std::optional<std::vector<int64_t>> {
    for (const auto& t : metadata->tensors) {
      if (t.path == p) return t.global_shape;
    }
    return std::nullopt;
  };
  torch::NoGradGuard no_grad;
  const Guard buffers = original_buffer_dtypes();
  State rest;
  std::vector<std::string> rest_keys;
  for (auto& [key, item] : state) {
    detail::ShardedModule* sharded = nullptr;
    torch::nn::Module* module = nullptr;
    torch::optim::Optimizer* optimizer = nullptr;
    if (item.is_stateful()) {
      if (auto* m = dynamic_cast<checkpoint::ModuleStateful*>(item.stateful().get())) {
        sharded = sharded_for(m->module());
        module = &m->module();
      } else if (auto* o = dynamic_cast<checkpoint::OptimizerStateful*>(item.stateful().get())) {
        for (const auto& e : entries_) {
          for (auto& group : o->optimizer().param_groups()) {
            for (const auto& p : group.params()) {
              if (!sharded && e->sharded->shard_variable_for(p).defined()) {
                sharded = e->sharded.get();
              }
            }
          }
        }
        optimizer = &o->optimizer();
      }
    }
    if (!sharded) {
      rest.set(key, item);
      rest_keys.push_back(key);
      continue;
    }
    const auto members = sharded->members();
    if (!sharded_dir && !file.find(Value(key))) {
      if (strict) {
        throw std::runtime_error(fmt::format(
            "The requested state contains a key '{}' that does not exist in the loaded checkpoint "
            "{}. To disable strict loading, pass strict = false.",
            key, path));
      }
      continue;
    }
    if (module) {
      std::set<std::string> sharded_names;
      for (const auto& m : members) sharded_names.insert(m.name);
      std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (destination, loaded)
      if (sharded_dir) {
        std::vector<ShardedItem> items;
        std::vector<at::Tensor> destinations;
        for (const auto& m : members) {
          add_load_items(items, destinations, {key, m.name}, m.sizes, m.piece_from, m.piece);
        }
        auto add_full = [&](const std::string& name, const at::Tensor& t) {
          if (sharded_names.count(name)) return;
          if (!saved_tensor_shape({key, name})) {
            if (strict) {
              throw std::runtime_error(fmt::format(
                  "The sharded checkpoint {} has no entry '{}.{}' for the module under '{}'.", path,
                  key, name, key));
            }
            return;
          }
          ShardedItem item;
          item.path = {key, name};
          item.tensor =
              TensorShard{torch::empty_like(t), std::vector<int64_t>(t.dim(), 0), t.sizes().vec()};
          items.push_back(std::move(item));
          destinations.push_back(t);
        };
        for (const auto& p : module->named_parameters()) add_full(p.key(), p.value());
        for (const auto& b : module->named_buffers()) add_full(b.key(), b.value());
        checkpoint::load_sharded(path, items);
        copy_loaded(items, destinations);
      } else {
        const Value& sd = file.at(Value(key));
        for (const auto& m : members) {
          const Value* v = sd.find(Value(m.name));
          if (!v) {
            if (strict) {
              throw std::runtime_error(
                  fmt::format("The checkpoint {} has no parameter '{}' for the module under '{}'.",
                              path, m.name, key));
            }
            continue;
          }
          m.piece.copy_(v->to_tensor().reshape({-1}).narrow(0, m.piece_from, m.piece_len));
        }
        auto load_full = [&](const std::string& name, const at::Tensor& t) {
          if (sharded_names.count(name)) return;
          const Value* v = sd.find(Value(name));
          if (v) t.copy_(v->to_tensor());
        };
        for (const auto& p : module->named_parameters()) load_full(p.key(), p.value());
        for (const auto& b : module->named_buffers()) load_full(b.key(), b.value());
        file.erase(Value(key));
      }
      sharded->refresh_full();
      continue;
    }
    // Optimizer: rebuild Python's integer-indexed layout with this rank's pieces.
    const auto map = map_optimizer(*optimizer, members);
    Value state_value = Value::dict();
    Value groups;
    std::map<std::string, int64_t> index_of;
    for (std::size_t i = 0; i < map.member_of.size(); ++i) {
      if (map.member_of[i] >= 0) index_of[members[map.member_of[i]].name] = static_cast<int64_t>(i);
    }
    auto rename_groups = [&](const Value& saved) {
      Value out = Value::list();
      for (const auto& g : saved.elements()) {
        Value copy = g;
        Value ids = Value::list();
        for (const auto& id : g.at(Value("params")).elements()) {
          if (id.kind() == Value::Kind::String) {
            auto it = index_of.find(id.to_string());
            if (it == index_of.end()) {
              throw std::runtime_error(fmt::format(
                  "The checkpoint {} has optimizer state for parameter '{}', which the optimizer "
                  "under '{}' does not hold.",
                  path, id.to_string(), key));
            }
            ids.elements().push_back(Value(it->second));
          } else {
            ids.elements().push_back(id);
          }
        }
        copy.set(Value("params"), ids);
        out.elements().push_back(std::move(copy));
      }
      return out;
    };
    if (sharded_dir) {
      std::vector<ShardedItem> items;
      std::vector<at::Tensor> dests;  // per item (undefined for value items)
      struct Target {
        int64_t index;
        std::string state_key;
        at::Tensor tensor;  // assembled piece or whole tensor; undefined: a value item
        std::size_t item;   // the value item
      };
      std::vector<Target> targets;
      for (const auto& [name, index] : index_of) {
        const auto& mem = members[map.member_of[index]];
        for (const auto& t : metadata->tensors) {
          if (t.path.size() != 4 || t.path[0] != key || t.path[1] != "state" || t.path[2] != name) {
            continue;
          }
          Target target{index, t.path[3], {}, 0};
          const auto options = torch::TensorOptions().dtype(t.dtype);
          if (t.global_shape == mem.sizes && !mem.sizes.empty()) {
            target.tensor = torch::empty({mem.piece_len}, options);
            add_load_items(items, dests, t.path, mem.sizes, mem.piece_from, target.tensor);
          } else {
            target.tensor = torch::empty(t.global_shape, options);
            ShardedItem item;
            item.path = t.path;
            item.tensor =
                TensorShard{torch::empty(t.global_shape, options),
                            std::vector<int64_t>(t.global_shape.size(), 0), t.global_shape};
            items.push_back(std::move(item));
            dests.push_back(target.tensor);
          }
          targets.push_back(std::move(target));
        }
        for (const auto& v : metadata->values) {
          if (v.size() == 4 && v[0] == key && v[1] == "state" && v[2] == name) {
            ShardedItem item;
            item.path = v;
            item.value = Value();
            targets.push_back(Target{index, v[3], {}, items.size()});
            items.push_back(std::move(item));
            dests.emplace_back();
          }
        }
      }
      // param_groups: DCP's flattened keys (Python FSDP's form, and ours) or one value item.
      Value saved_groups;
      try {
        saved_groups = checkpoint::load_sharded_full(path, {key, "param_groups"});
      } catch (const std::runtime_error&) {
        throw std::runtime_error(fmt::format(
            "The sharded checkpoint {} has no '{}.param_groups': it holds no optimizer under '{}'.",
            path, key, key));
      }
      checkpoint::load_sharded(path, items);
      copy_loaded(items, dests);
      for (auto& target : targets) {
        const auto& mem = members[map.member_of[target.index]];
        Value v;
        if (!target.tensor.defined()) {
          v = *items[target.item].value;
        } else if (target.tensor.numel() == mem.piece_len && target.tensor.dim() == 1) {
          v = Value(target.tensor.view(mem.shard_var.sizes()));  // the optimizer tensor's shape
        } else {
          v = Value(target.tensor);
        }
        Value* entry = state_value.find(Value(target.index));
        if (!entry) {
          state_value.set(Value(target.index), Value::dict());
          entry = state_value.find(Value(target.index));
        }
        entry->set(Value(target.state_key), v);
      }
      groups = rename_groups(saved_groups);
    } else {
      const Value& sd = file.at(Value(key));
      for (const auto& [name_value, st] : sd.at(Value("state")).items()) {
        const std::string name =
            name_value.kind() == Value::Kind::String ? name_value.to_string() : name_value.repr();
        auto it = index_of.find(name);
        if (it == index_of.end()) {
          throw std::runtime_error(fmt::format(
              "The checkpoint {} has optimizer state for parameter '{}', which the optimizer "
              "under '{}' does not hold.",
              path, name, key));
        }
        const auto& mem = members[map.member_of[it->second]];
        Value entry = Value::dict();
        for (const auto& [k, v] : st.items()) {
          if (v.kind() == Value::Kind::Tensor && v.to_tensor().sizes().vec() == mem.sizes &&
              !mem.sizes.empty()) {
            entry.set(k, Value(v.to_tensor()
                                   .reshape({-1})
                                   .narrow(0, mem.piece_from, mem.piece_len)
                                   .reshape(mem.shard_var.sizes())
                                   .clone()));
          } else {
            entry.set(k, v);
          }
        }
        state_value.set(Value(it->second), entry);
      }
      groups = rename_groups(sd.at(Value("param_groups")));
      file.erase(Value(key));
    }
    checkpoint::OptimizerStateful(std::shared_ptr<torch::optim::Optimizer>(
                                      std::shared_ptr<torch::optim::Optimizer>{}, optimizer))
        .load_state_dict(
            Value::dict({{Value("state"), state_value}, {Value("param_groups"), groups}}));
  }
  if (!rest.empty()) load_state_into(rest, file, strict);
  for (const auto& key : rest_keys) state.set(key, rest.at(key));
  return State::from_value(file);
}

}  // namespace cppfabric::strategies
