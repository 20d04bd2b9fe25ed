#include "strategies/sharding.hpp"

#include <c10/core/StorageImpl.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/strides.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::detail {

namespace {

struct Member {
  at::Tensor param;  // the user's parameter
  std::string name;
  std::vector<int64_t> sizes;
  int64_t offset = 0;  // in the flat buffer
  int64_t numel = 0;
  // This rank's piece of the parameter: elements [piece_from, piece_from + piece_len) of the
  // flattened parameter, stored at [piece_begin, piece_begin + piece_len) of the shard.
  int64_t piece_begin = 0;
  int64_t piece_from = 0;
  int64_t piece_len = 0;
  at::Tensor shard_var;  // what the optimizer holds: `param` (Swap) or a leaf view (Replicated)
};

// A tensor sharing `base`'s storage without being an autograd view (LibTorch's zero_grad calls
// detach_() on gradients, which views refuse).
at::Tensor storage_view(const at::Tensor& base, int64_t offset, c10::IntArrayRef sizes) {
  return torch::empty({0}, base.options())
      .set_(base.storage(), base.storage_offset() + offset, sizes, c10::contiguous_strides(sizes));
}

bool same_view(const at::Tensor& a, const at::Tensor& b) {
  return a.defined() && b.defined() && a.data_ptr() == b.data_ptr() && a.sizes() == b.sizes() &&
         a.strides() == b.strides();
}

struct Unit {
  std::vector<Member> members;
  int64_t total = 0, padded = 0, shard_numel = 0;
  int shards = 1;
  int rank = 0;
  std::size_t index = 0;
  ParamLayout layout = ParamLayout::Swap;
  // Mixed precision: `full` (and so forward, backward and the parameters' gradients) is in
  // compute_dtype, the gradient collective in reduce_dtype; `cast` when compute_dtype is not the
  // shard's dtype (then `full` is a separate buffer, freed while resharded, even for NO_SHARD).
  c10::ScalarType compute_dtype = c10::ScalarType::Float;
  c10::ScalarType reduce_dtype = c10::ScalarType::Float;
  bool cast = false;
  // CPU offload: `shard` and `shard_grad` live in host memory, `full` (a separate buffer, freed
  // while resharded, even for NO_SHARD) and the gradient collectives on the compute device.
  bool offload = false;
  double post_divide = 1;  // applied to the reduced gradient (low-precision reductions)
  at::Tensor shard;        // shard_numel elements, this rank's parameters
  at::Tensor full;         // padded elements; Swap + sharded: storage freed while resharded
  at::Tensor precise;      // summon_full_params under mixed precision: a full-precision gather
  at::Tensor shard_grad;   // shard_numel elements
  bool shard_grad_live = false;
  at::Tensor accum;  // full-size gradients accumulated while sync is off
  bool gathered = false;
  // Per backward pass.
  std::vector<char> ready;
  int64_t ready_count = 0;
  std::size_t launched = 0;  // in-place all-reduce path: members launched so far
  bool in_pass = false;
  bool reduced = false;
  std::vector<collectives::CollectiveWork> works;  // the gradient collectives in flight
  at::Tensor reduce_in, reduce_out;
  std::vector<at::Tensor> member_grads;  // in-place all-reduce: each member's own gradient

  int64_t bytes(int64_t numel) const { return numel * static_cast<int64_t>(shard.element_size()); }
  int64_t full_bytes() const {
    return padded * static_cast<int64_t>(c10::elementSize(compute_dtype));
  }
  bool frees_full() const { return layout == ParamLayout::Swap && (shards > 1 || cast || offload); }
  // The shard's dtype on the device where forward, backward and the collectives run.
  at::TensorOptions compute_options() const { return shard.options().device(full.device()); }

  at::Tensor piece_view(const Member& m) const {
    if (shards == 1) return storage_view(shard, m.offset, m.sizes);  // NO_SHARD: own shape
    return storage_view(shard, m.piece_begin, {m.piece_len});
  }
  at::Tensor grad_piece_view(const Member& m) const {
    if (shards == 1) return storage_view(shard_grad, m.offset, m.sizes);
    return storage_view(shard_grad, m.piece_begin, {m.piece_len});
  }
  at::Tensor flat_piece(const at::Tensor& shard_like, const Member& m) const {
    return shard_like.narrow(0, shards == 1 ? m.offset : m.piece_begin,
                             shards == 1 ? m.numel : m.piece_len);
  }
};

// Gradients are averaged by dividing before the sum (as DDP does). A low-precision collective
// divides in two steps, by `pre` before and `post` after, so the sum neither overflows nor
// underflows (Python FSDP's gradient pre- and post-divide factors).
std::pair<double, double> divide_factors(int world, c10::ScalarType dtype) {
  if (world <= 1) return {1, 1};
  if (dtype != c10::ScalarType::Half && dtype != c10::ScalarType::BFloat16) return {world, 1};
  int pre = 1;
  while (world % pre == 0 && world / pre > pre) pre *= 2;
  return {pre, static_cast<double>(world) / pre};
}

void free_storage(const at::Tensor& t) {
  auto* impl = t.storage().unsafeGetStorageImpl();
  if (impl->nbytes() == 0) return;
  impl->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  impl->set_nbytes(0);
}

void alloc_storage(const at::Tensor& t, int64_t nbytes) {
  auto* impl = t.storage().unsafeGetStorageImpl();
  if (static_cast<int64_t>(impl->nbytes()) == nbytes) return;
  impl->set_data_ptr_noswap(impl->allocator()->allocate(static_cast<size_t>(nbytes)));
  impl->set_nbytes(static_cast<size_t>(nbytes));
}

}  // namespace

struct ShardedModule::State : std::enable_shared_from_this<ShardedModule::State> {
  std::recursive_mutex mutex;
  std::shared_ptr<collectives::ProcessGroup> group;
  ShardingConfig config;
  std::vector<Unit> units;
  bool require_sync = true;
  bool callback_queued = false;
  std::weak_ptr<void> pass_token;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::vector<uintptr_t> hook_keys;
  // Mixed precision and offload: changing a parameter's dtype or device (set_data) makes autograd
  // create a new gradient accumulator, so the hook is added again to each one a gather creates.
  struct LateHook {
    std::shared_ptr<torch::autograd::Node> accumulator;
    uintptr_t key = 0;
  };
  std::vector<std::vector<LateHook>> late_hooks;  // per unit, per member: the latest one
  int64_t full_bytes = 0;
  int64_t peak_full_bytes = 0;
  // Units whose gradient collective was launched and is not yet folded in, oldest first.
  std::vector<Unit*> in_flight;
  // Offload: the streams of the device-to-host gradient copies not yet waited for.
  std::vector<c10::Stream> host_copy_streams;

  // The data-parallel world: the shard group times the replicas (HYBRID_SHARD).
  int world() const {
    return group->world_size() *
           (config.replicate_group ? config.replicate_group->world_size() : 1);
  }

  void account(int64_t delta) {
    full_bytes += delta;
    peak_full_bytes = std::max(peak_full_bytes, full_bytes);
  }

  // ---------------------------------------------------------------- parameters

  // Swap: the shard's gradient leaves the parameters (they are about to take their full shape);
  // Replicated: the shard tensors' gradients are folded into shard_grad. Sets shard_grad_live.
  void stash_grads(Unit& unit) {
    bool live = false;
    for (auto& m : unit.members) live = live || m.shard_var.grad().defined();
    unit.shard_grad_live = live;
    torch::NoGradGuard no_grad;
    for (auto& m : unit.members) {
      const auto& grad = m.shard_var.grad();
      auto piece = unit.flat_piece(unit.shard_grad, m);
      if (!live) continue;
      if (!grad.defined()) {
        piece.zero_();
      } else if (!same_view(grad, unit.grad_piece_view(m))) {
        piece.copy_(grad.reshape({-1}));
      }
      if (unit.layout == ParamLayout::Swap) m.param.mutable_grad().reset();
    }
  }

  void restore_grads(Unit& unit) {
    if (!unit.shard_grad_live) return;
    for (auto& m : unit.members) m.shard_var.mutable_grad() = unit.grad_piece_view(m);
  }

  // `full_precision`: under mixed precision, gather in the shard's dtype instead (summon).
  void gather(Unit& unit, bool full_precision = false) {
    if (unit.gathered || unit.layout == ParamLayout::Replicated || unit.members.empty()) return;
    torch::NoGradGuard no_grad;
    stash_grads(unit);
    const bool precise = unit.cast && full_precision;
    at::Tensor target = unit.full;
    if (precise) {
      unit.precise = torch::empty({unit.padded}, unit.compute_options());
      target = unit.precise;
    } else if (unit.frees_full()) {
      alloc_storage(unit.full, unit.full_bytes());
    }
    if (precise || unit.frees_full()) {
      account(static_cast<int64_t>(target.nbytes()));
      // Offload: the host shard is copied to the device first (non-blocking from pinned memory,
      // ordered before the collective on the current stream), and any cast runs there.
      at::Tensor source = unit.shard;
      if (source.device() != target.device() &&
          (unit.shards > 1 || source.scalar_type() != target.scalar_type())) {
        source = source.to(target.device(), /*non_blocking=*/true);
      }
      if (unit.shards == 1) {
        // NO_SHARD: the cast, the full-precision copy or the offload copy only.
        target.copy_(source, /*non_blocking=*/true);
      } else {
        group->all_gather_into(target, source.to(target.scalar_type()));
      }
    }
    for (auto& m : unit.members) {
      m.param.set_data(storage_view(target, m.offset, m.sizes));
    }
    unit.gathered = true;
    if ((unit.cast || unit.offload) && !full_precision) hook_late(unit);
  }

  void hook_late(Unit& unit);

  void reshard(Unit& unit) {
    if (!unit.gathered) return;
    torch::NoGradGuard no_grad;
    for (auto& m : unit.members) {
      m.param.mutable_grad().reset();
      m.param.set_data(unit.piece_view(m));
    }
    if (unit.precise.defined()) {
      unit.precise = at::Tensor();
      account(-unit.bytes(unit.padded));
    } else if (unit.frees_full()) {
      free_storage(unit.full);
      account(-unit.full_bytes());
    }
    unit.gathered = false;
    restore_grads(unit);
  }

  // ---------------------------------------------------------------- gradients

  // Gloo all-reduce path (GradReduce::AllReduce, nothing accumulated): each member's gradient
  // (the tensor autograd produced) is divided and all-reduced in place, one collective per
  // member, and this rank's piece is copied into shard_grad. The flat path packs the gradients
  // into a fresh full-size buffer first; on CPU a fresh buffer of that size is paid for in page
  // faults every step (134 MB: ~150 ms, against ~20 ms to fill it when reused). Same sums, same
  // collective order on every rank (members in unit order).
  // Not under HYBRID_SHARD (a second, replicate all-reduce) or mixed precision (a cast).
  bool reduce_in_place(const Unit& unit) const {
    return config.reduce == GradReduce::AllReduce && require_sync && group->world_size() > 1 &&
           !unit.accum.defined() && !config.replicate_group && !unit.cast &&
           unit.reduce_dtype == unit.shard.scalar_type();
  }

  // The in-place path's next member (members in unit order on every rank).
  void launch_member(Unit& unit) {
    torch::NoGradGuard no_grad;
    if (unit.launched == 0) {
      unit.member_grads.clear();
      if (unit.layout == ParamLayout::Replicated) stash_grads(unit);
    }
    auto& m = unit.members[unit.launched++];
    at::Tensor grad = m.param.grad();
    m.param.mutable_grad().reset();
    if (!grad.defined()) {
      grad = torch::zeros(m.sizes, unit.compute_options());
    } else if (grad.use_count() == 1 && grad.storage().use_count() == 1) {
      grad.div_(world());  // only this function holds it: nobody sees the change
    } else {
      grad = at::div(grad, world());
    }
    unit.member_grads.push_back(grad);
    unit.works.push_back(
        group->all_reduce_async(unit.member_grads.back(), collectives::ReduceKind::Sum));
  }

  void launch_reduce(Unit& unit) {
    if (unit.reduced) return;
    unit.reduced = true;
    if (reduce_in_place(unit)) {
      while (unit.launched < unit.members.size()) launch_member(unit);
      return;
    }
    if (unit.layout == ParamLayout::Replicated) stash_grads(unit);
    torch::NoGradGuard no_grad;
    // Pre-divided by the world size (as DDP); a low-precision collective divides in two steps
    // (divide_factors). Without accumulated gradients the division is fused into the packing copy:
    // one pass over the gradients instead of zero, add and divide. Packed straight into the
    // collective's dtype, unless gradients are being accumulated (no_backward_sync): those are
    // kept in the shard's dtype.
    const auto [pre, post] = divide_factors(world(), unit.reduce_dtype);
    const bool divide = require_sync && pre > 1;
    at::Tensor flat = unit.accum;
    unit.accum = at::Tensor();
    if (flat.defined()) {
      for (auto& m : unit.members) {
        const auto& grad = m.param.grad();
        if (grad.defined()) flat.narrow(0, m.offset, m.numel).add_(grad.reshape({-1}));
        m.param.mutable_grad().reset();
      }
      if (require_sync && flat.scalar_type() != unit.reduce_dtype)
        flat = flat.to(unit.reduce_dtype);
      if (divide) flat.div_(pre);
    } else {
      flat = torch::empty({unit.padded},
                          unit.compute_options().dtype(require_sync ? unit.reduce_dtype
                                                                    : unit.shard.scalar_type()));
      for (auto& m : unit.members) {
        const auto& grad = m.param.grad();
        auto piece = flat.narrow(0, m.offset, m.numel);
        if (!grad.defined()) {
          piece.zero_();
        } else if (divide && grad.scalar_type() == flat.scalar_type()) {
          at::div_out(piece, grad.reshape({-1}), pre);
        } else {
          piece.copy_(grad.reshape({-1}));  // a cast first: divide in the collective's dtype
          if (divide) piece.div_(pre);
        }
        m.param.mutable_grad().reset();
      }
      if (unit.padded > unit.total) flat.narrow(0, unit.total, unit.padded - unit.total).zero_();
    }
    if (!require_sync) {
      unit.accum = flat;
      return;
    }
    unit.post_divide = post;
    unit.reduce_in = flat;
    const bool many = group->world_size() > 1;  // the shard group (HYBRID_SHARD: one replica)
    if (many && unit.shards > 1 && config.reduce == GradReduce::ReduceScatter) {
      unit.reduce_out = torch::empty({unit.shard_numel}, flat.options());
      unit.works.push_back(group->reduce_scatter_async(unit.reduce_out, flat));
    } else {
      if (many) unit.works.push_back(group->all_reduce_async(flat, collectives::ReduceKind::Sum));
      unit.reduce_out =
          unit.shards > 1 ? flat.narrow(0, unit.rank * unit.shard_numel, unit.shard_numel) : flat;
    }
  }

  void finish_reduce(Unit& unit) {
    for (auto& w : unit.works) w.wait();
    unit.works.clear();
    std::erase(in_flight, &unit);
    if (!unit.reduce_out.defined() && unit.member_grads.empty()) return;
    torch::NoGradGuard no_grad;
    if (!unit.member_grads.empty()) {
      for (std::size_t i = 0; i < unit.members.size(); ++i) {
        const auto& m = unit.members[i];
        auto piece = unit.flat_piece(unit.shard_grad, m);
        if (piece.numel() == 0) continue;
        auto reduced = unit.member_grads[i].reshape({-1});
        if (unit.shards > 1) reduced = reduced.narrow(0, m.piece_from, m.piece_len);
        fold(piece, reduced, unit.shard_grad_live);
      }
    } else {
      // HYBRID_SHARD: the shard group's sum, summed again over the replicas of this shard.
      if (config.replicate_group && config.replicate_group->world_size() > 1) {
        config.replicate_group->all_reduce(unit.reduce_out, collectives::ReduceKind::Sum);
      }
      if (unit.post_divide > 1) unit.reduce_out.div_(unit.post_divide);
      fold(unit.shard_grad, unit.reduce_out, unit.shard_grad_live);
    }
    unit.shard_grad_live = true;
    unit.reduce_in = at::Tensor();
    unit.reduce_out = at::Tensor();
    unit.member_grads.clear();
    // A Swap unit still gathered gets its shard gradients back when it is resharded.
    if (unit.layout == ParamLayout::Replicated || !unit.gathered) restore_grads(unit);
  }

  // Writes (or adds) a reduced gradient into this rank's shard gradient. Under offload that lives
  // in pinned host memory: the copy from the device is queued without waiting (as Python FSDP's),
  // so backward goes on launching work, and wait_for_host_copies() waits for it before anything
  // on the host reads the gradients (end of the pass). Adding needs the values on the host now.
  void fold(const at::Tensor& into, const at::Tensor& reduced, bool accumulate) {
    if (accumulate) {
      at::Tensor(into).add_(reduced.to(into.device()));
      return;
    }
    const bool queued = reduced.is_cuda() && into.is_pinned();
    at::Tensor(into).copy_(reduced, /*non_blocking=*/queued);
    if (!queued) return;
    const auto stream =
        c10::impl::VirtualGuardImpl(reduced.device().type()).getStream(reduced.device());
    if (std::find(host_copy_streams.begin(), host_copy_streams.end(), stream) ==
        host_copy_streams.end()) {
      host_copy_streams.push_back(stream);
    }
  }
  void wait_for_host_copies() {
    for (const auto& stream : host_copy_streams) stream.synchronize();
    host_copy_streams.clear();
  }

  void post_backward(Unit& unit) {
    launch_reduce(unit);
    if (!config.overlap) {
      finish_reduce(unit);
      if (unit.layout == ParamLayout::Swap) reshard(unit);
      return;
    }
    // Overlap: the collectives read and write only the unit's own gradient buffers (reduce_in /
    // reduce_out, or member_grads), never its parameters or shard_grad, so a Swap unit's full
    // parameters are freed at once, as without overlap. The result is folded into shard_grad by
    // finish_reduce: in reap_reduces() when too many are in flight, or in finalize().
    if (unit.layout == ParamLayout::Swap) reshard(unit);
    if (!unit.works.empty()) in_flight.push_back(&unit);
    reap_reduces();
  }

  // Swap (FSDP): while more than kMaxInFlight units are in flight, waits for the oldest and
  // folds it in: each keeps its full-size gradients alive, and FULL_SHARD's re-gathers during
  // backward share the backend's threads with them. Depends only on the launch order (not on
  // timing), so every rank folds the same units at the same point; changes no result.
  static constexpr std::size_t kMaxInFlight = 2;
  void reap_reduces() {
    while (in_flight.size() > kMaxInFlight && in_flight.front()->layout == ParamLayout::Swap) {
      finish_reduce(*in_flight.front());
    }
  }

  void reset_pass() {
    for (auto& unit : units) {
      std::fill(unit.ready.begin(), unit.ready.end(), 0);
      unit.ready_count = 0;
      unit.launched = 0;
      unit.in_pass = false;
      unit.reduced = false;
    }
    in_flight.clear();
    callback_queued = false;
    pass_token.reset();
  }

  // A backward pass that threw midway never ran its final callback: wait for what it launched,
  // drop the pass (as the DDP reducer does).
  void recover_if_interrupted() {
    if (callback_queued && pass_token.expired()) drop_pass();
  }

  void drop_pass() {
    try {
      wait_for_host_copies();  // before zero_grad writes the host gradients
    } catch (...) {
    }
    for (auto& unit : units) {
      for (auto& w : unit.works) {
        try {
          w.wait();
        } catch (...) {
        }
      }
      unit.works.clear();
      unit.reduce_in = unit.reduce_out = at::Tensor();
      unit.member_grads.clear();
      // ZeRO: the full-size gradients the pass left on the parameters are not what the optimizer
      // holds (its zero_grad cannot reach them); drop them with the pass.
      if (unit.layout == ParamLayout::Replicated) {
        for (auto& m : unit.members) m.param.mutable_grad().reset();
      }
    }
    reset_pass();
  }

  void queue_final_callback(const std::weak_ptr<State>& self) {
    if (callback_queued) return;
    callback_queued = true;
    auto token = std::make_shared<char>(0);
    pass_token = token;
    torch::autograd::Engine::get_default_engine().queue_callback([self, token] {
      if (auto state = self.lock()) state->finalize();
    });
  }

  void on_grad_ready(std::size_t u, std::size_t i, const std::weak_ptr<State>& self) {
    std::lock_guard<std::recursive_mutex> lock(mutex);
    recover_if_interrupted();
    queue_final_callback(self);
    auto& unit = units[u];
    if (unit.layout == ParamLayout::Swap && !unit.gathered && !unit.reduced) {
      // Autograd has already added it to the shard's gradient, which the optimizer holds.
      throw std::runtime_error(fmt::format(
          "{}: a gradient reached parameter '{}' while its unit was resharded. This happens in a "
          "second backward through a retained graph when the graph does not pass through a "
          "tensor output of the set-up module (a Tensor, a tuple or a vector of them), whose "
          "backward gathers the parameters again. Return tensors from forward, or run forward "
          "again before each backward.",
          config.strategy_name, unit.members[i].name));
    }
    unit.in_pass = true;
    if (unit.reduced || unit.ready[i]) return;
    unit.ready[i] = 1;
    // ZeRO with overlap: a bucket's members need not wait for the whole bucket (one bucket may
    // hold the whole model): each is all-reduced once it and the members before it are ready.
    if (config.overlap && unit.layout == ParamLayout::Replicated && reduce_in_place(unit)) {
      while (unit.launched < unit.members.size() && unit.ready[unit.launched]) {
        launch_member(unit);
      }
    }
    if (++unit.ready_count == static_cast<int64_t>(unit.members.size())) post_backward(unit);
  }

  void on_pre_backward(std::size_t u, const std::weak_ptr<State>& self) {
    std::lock_guard<std::recursive_mutex> lock(mutex);
    recover_if_interrupted();
    queue_final_callback(self);
    units[u].in_pass = true;
    gather(units[u]);
  }

  void finalize() {
    std::lock_guard<std::recursive_mutex> lock(mutex);
    try {
      // In unit order on every rank: units whose parameters got no gradient (or only some) are
      // reduced with zeros for the missing ones, so every rank runs the same collectives.
      for (auto& unit : units) {
        if (unit.members.empty()) continue;
        if (unit.in_pass || unit.gathered || unit.ready_count > 0) launch_reduce(unit);
      }
      for (auto& unit : units) {
        finish_reduce(unit);
        if (unit.layout == ParamLayout::Swap) reshard(unit);
      }
      wait_for_host_copies();
    } catch (...) {
      try {
        wait_for_host_copies();
      } catch (...) {  // the first error is the one to report
      }
      reset_pass();
      throw;
    }
    reset_pass();
  }
};

namespace {

class ShardGradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ShardGradReadyHook(std::weak_ptr<ShardedModule::State> state, std::size_t unit, std::size_t index)
      : state_(std::move(state)), unit_(unit), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    if (auto state = state_.lock()) state->on_grad_ready(unit_, index_, state_);
    return outputs;
  }

 private:
  std::weak_ptr<ShardedModule::State> state_;
  std::size_t unit_, index_;
};

}  // namespace

void ShardedModule::State::hook_late(Unit& unit) {
  if (late_hooks.size() < units.size()) late_hooks.resize(units.size());
  auto& hooks = late_hooks[unit.index];
  hooks.resize(unit.members.size());
  for (std::size_t i = 0; i < unit.members.size(); ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(unit.members[i].param);
    if (!accumulator || accumulator == hooks[i].accumulator) continue;
    hooks[i].key = accumulator->add_post_hook(
        std::make_unique<ShardGradReadyHook>(weak_from_this(), unit.index, i));
    hooks[i].accumulator = accumulator;
  }
}

namespace {

// What a PreBackward node keeps: the sharded module's state, weakly (a graph may outlive it).
struct StateRef : torch::CustomClassHolder {
  explicit StateRef(std::weak_ptr<ShardedModule::State> s) : state(std::move(s)) {}
  std::weak_ptr<ShardedModule::State> state;
};

// Identity in forward; its backward gathers the unit's parameters again before the unit's own
// backward functions run (they follow this node in the graph).
class PreBackward : public torch::autograd::Function<PreBackward> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const std::shared_ptr<ShardedModule::State>& state, int64_t unit) {
    ctx->saved_data["state"] = c10::IValue::make_capsule(c10::make_intrusive<StateRef>(state));
    ctx->saved_data["unit"] = unit;
    return input;  // returned inputs become aliases with this node as grad_fn
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto ref =
        c10::static_intrusive_pointer_cast<StateRef>(ctx->saved_data["state"].toCapsule());
    const auto unit = static_cast<std::size_t>(ctx->saved_data["unit"].toInt());
    auto state = ref->state.lock();
    if (!state) {
      throw std::runtime_error(
          "backward through the output of a sharded module whose strategy was torn down (or "
          "whose module was set up again) since its forward: run forward again.");
    }
    state->on_pre_backward(unit, ref->state);
    return {grads[0], at::Tensor(), at::Tensor()};
  }
};

}  // namespace

ShardedModule::ShardedModule(std::vector<UnitParams> units,
                             std::shared_ptr<collectives::ProcessGroup> group,
                             ShardingConfig config)
    : state_(std::make_shared<State>()) {
  auto& s = *state_;
  s.group = std::move(group);
  s.config = std::move(config);
  const int world = s.group->world_size();
  const int rank = s.group->rank();
  torch::NoGradGuard no_grad;
  for (auto& params : units) {
    Unit unit;
    unit.index = s.units.size();
    unit.layout = s.config.layout;
    unit.shards = s.config.shard_params ? world : 1;
    unit.rank = rank;
    for (auto& [name, param] : params) {
      if (!unit.members.empty()) {
        const auto& first = unit.members.front();
        if (param.scalar_type() != first.param.scalar_type() ||
            param.device() != first.param.device()) {
          throw std::invalid_argument(fmt::format(
              "{}: the parameters of one sharding unit must share dtype and device, but '{}' is "
              "{} on {} and '{}' is {} on {}. Convert the module to one dtype, or put these "
              "parameters into separate units.",
              s.config.strategy_name, first.name, c10::toString(first.param.scalar_type()),
              first.param.device().str(), name, c10::toString(param.scalar_type()),
              param.device().str()));
        }
      }
      Member m;
      m.param = param;
      m.name = name;
      m.sizes = param.sizes().vec();
      m.numel = param.numel();
      m.offset = unit.total;
      unit.total += m.numel;
      unit.members.push_back(std::move(m));
    }
    if (unit.members.empty()) {
      s.units.push_back(std::move(unit));
      continue;
    }
    unit.padded = (unit.total + unit.shards - 1) / unit.shards * unit.shards;
    unit.shard_numel = unit.padded / unit.shards;
    const auto options = unit.members.front().param.options().requires_grad(false);
    at::Tensor packed = torch::zeros({unit.padded}, options);
    for (auto& m : unit.members) {
      packed.narrow(0, m.offset, m.numel).copy_(m.param.detach().reshape({-1}));
    }
    const int64_t lo_shard = unit.shards > 1 ? rank * unit.shard_numel : 0;
    const auto& compute = s.config.compute_device;
    unit.offload = compute.has_value() && unit.layout == ParamLayout::Swap;
    // Offload: host memory, pinned for non-blocking copies to a CUDA device.
    const auto host_options =
        options.device(c10::kCPU).pinned_memory(unit.offload && compute->is_cuda());
    if (unit.offload) {
      unit.shard =
          torch::empty({unit.shard_numel}, host_options)
              .copy_(unit.shards > 1 ? packed.narrow(0, lo_shard, unit.shard_numel) : packed);
    } else {
      unit.shard = unit.shards > 1 ? packed.narrow(0, lo_shard, unit.shard_numel).clone()
                                   : packed;  // NO_SHARD: one buffer
    }
    const auto own = packed.scalar_type();
    unit.compute_dtype =
        unit.layout == ParamLayout::Swap ? s.config.param_dtype.value_or(own) : own;
    unit.reduce_dtype =
        unit.layout == ParamLayout::Swap ? s.config.reduce_dtype.value_or(unit.compute_dtype) : own;
    unit.cast = unit.compute_dtype != own;
    if (unit.offload) {
      unit.full = torch::empty({unit.padded}, options.dtype(unit.compute_dtype).device(*compute));
      unit.shard_grad = torch::zeros({unit.shard_numel}, host_options);
    } else {
      unit.full =
          unit.cast ? torch::empty({unit.padded}, options.dtype(unit.compute_dtype)) : packed;
      unit.shard_grad = torch::zeros({unit.shard_numel}, options);
    }
    for (auto& m : unit.members) {
      const int64_t lo = std::max(m.offset, lo_shard);
      const int64_t hi = std::min(m.offset + m.numel, lo_shard + unit.shard_numel);
      m.piece_len = std::max<int64_t>(0, hi - lo);
      m.piece_begin = m.piece_len > 0 ? lo - lo_shard : 0;
      m.piece_from = m.piece_len > 0 ? lo - m.offset : 0;
    }
    unit.ready.assign(unit.members.size(), 0);
    s.units.push_back(std::move(unit));
  }

  // Hooks first, while every parameter has its full shape (the accumulator records it).
  std::weak_ptr<State> weak = state_;
  for (std::size_t u = 0; u < s.units.size(); ++u) {
    for (std::size_t i = 0; i < s.units[u].members.size(); ++i) {
      auto& m = s.units[u].members[i];
      auto accumulator = torch::autograd::impl::grad_accumulator(m.param);
      if (!accumulator) {
        throw std::invalid_argument(fmt::format(
            "{}: parameter '{}' is not a leaf tensor that requires grad; it cannot be sharded.",
            s.config.strategy_name, m.name));
      }
      s.hook_keys.push_back(
          accumulator->add_post_hook(std::make_unique<ShardGradReadyHook>(weak, u, i)));
      s.accumulators.push_back(std::move(accumulator));
    }
  }

  for (auto& unit : s.units) {
    if (unit.members.empty()) continue;
    if (unit.layout == ParamLayout::Replicated) {
      for (auto& m : unit.members) {
        m.param.set_data(storage_view(unit.full, m.offset, m.sizes));
        m.shard_var = unit.piece_view(m);
        m.shard_var.set_requires_grad(true);
      }
    } else {
      for (auto& m : unit.members) m.shard_var = m.param;
      unit.gathered = true;
      s.account(unit.frees_full() ? unit.full_bytes() : 0);
      for (auto& m : unit.members) m.param.set_data(storage_view(unit.full, m.offset, m.sizes));
      s.reshard(unit);
    }
  }
  s.peak_full_bytes = s.full_bytes;
}

ShardedModule::~ShardedModule() {
  for (std::size_t i = 0; i < state_->accumulators.size(); ++i) {
    state_->accumulators[i]->del_post_hook(state_->hook_keys[i]);
  }
  for (const auto& unit : state_->late_hooks) {
    for (const auto& hook : unit) {
      if (hook.accumulator) hook.accumulator->del_post_hook(hook.key);
    }
  }
}

void ShardedModule::before_outer_forward() {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  state_->recover_if_interrupted();
  if (!state_->units.empty()) state_->gather(state_->units[0]);
}

void ShardedModule::after_outer_forward(bool grad_enabled) {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  // The outer unit keeps its parameters for backward (they are needed at once); without a
  // backward to come, free them now.
  if (!grad_enabled && !state_->units.empty()) state_->reshard(state_->units[0]);
}

at::Tensor ShardedModule::after_outer_output(const at::Tensor& output) {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  if (state_->units.empty() || state_->units[0].members.empty() ||
      state_->units[0].layout != ParamLayout::Swap || !torch::GradMode::is_enabled() ||
      !output.defined() || !output.requires_grad()) {
    return output;
  }
  return PreBackward::apply(output, state_, int64_t{0});
}

void ShardedModule::before_unit_forward(std::size_t u) {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  state_->gather(state_->units.at(u));
}

at::Tensor ShardedModule::after_unit_forward(std::size_t u, const at::Tensor& output) {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  auto& unit = state_->units.at(u);
  const bool grad = torch::GradMode::is_enabled();
  if (!grad) {
    state_->reshard(unit);
    return output;
  }
  if (!output.defined() || !output.requires_grad()) return output;
  at::Tensor wrapped = PreBackward::apply(output, state_, static_cast<int64_t>(u));
  if (state_->config.reshard_after_forward) state_->reshard(unit);
  return wrapped;
}

void ShardedModule::after_unit_forward_untracked(std::size_t u) {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  if (!torch::GradMode::is_enabled()) state_->reshard(state_->units.at(u));
}

void ShardedModule::after_unit_checkpointed_forward(std::size_t u) {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  if (state_->config.reshard_after_forward) state_->reshard(state_->units.at(u));
}

void ShardedModule::before_unit_recompute(std::size_t u) {
  state_->on_pre_backward(u, std::weak_ptr<State>(state_));
}

void ShardedModule::discard_failed_backward() {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  if (state_->callback_queued) state_->drop_pass();
  // Units left gathered (by the failed pass or by its forward): their full-size gradients belong
  // to the dropped pass; resharding puts their shards' earlier gradients back on the parameters,
  // where the optimizer's zero_grad reaches them.
  for (auto& unit : state_->units) {
    if (unit.layout != ParamLayout::Swap || !unit.gathered) continue;
    for (auto& m : unit.members) m.param.mutable_grad().reset();
    state_->reshard(unit);
  }
}

void ShardedModule::set_require_sync(bool require) {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  state_->require_sync = require;
}

bool ShardedModule::require_sync() const {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  return state_->require_sync;
}

void ShardedModule::after_optimizer_step() {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  if (state_->config.layout != ParamLayout::Replicated) return;
  torch::NoGradGuard no_grad;
  for (auto& unit : state_->units) {
    if (unit.members.empty() || unit.shards == 1) continue;
    state_->group->all_gather_into(unit.full, unit.shard);
  }
}

Guard ShardedModule::summon_full_params() {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  std::vector<std::size_t> gathered_here;
  for (std::size_t u = 0; u < state_->units.size(); ++u) {
    if (!state_->units[u].gathered && state_->units[u].layout == ParamLayout::Swap &&
        !state_->units[u].members.empty()) {
      state_->gather(state_->units[u], /*full_precision=*/true);
      gathered_here.push_back(u);
    }
  }
  std::weak_ptr<State> weak = state_;
  return Guard([weak, gathered_here] {
    auto state = weak.lock();
    if (!state) return;
    std::lock_guard<std::recursive_mutex> lock(state->mutex);
    for (auto u : gathered_here) state->reshard(state->units[u]);
  });
}

at::Tensor ShardedModule::shard_variable_for(const at::Tensor& param) const {
  for (const auto& unit : state_->units) {
    for (const auto& m : unit.members) {
      if (m.param.unsafeGetTensorImpl() == param.unsafeGetTensorImpl() ||
          (m.shard_var.defined() &&
           m.shard_var.unsafeGetTensorImpl() == param.unsafeGetTensorImpl())) {
        return m.shard_var;
      }
    }
  }
  return at::Tensor();
}

std::vector<at::Tensor> ShardedModule::shard_variables() const {
  std::vector<at::Tensor> out;
  for (const auto& unit : state_->units) {
    for (const auto& m : unit.members) out.push_back(m.shard_var);
  }
  return out;
}

bool ShardedModule::sharded() const {
  return state_->config.shard_params && state_->group->world_size() > 1;
}

std::size_t ShardedModule::num_units() const { return state_->units.size(); }

ShardingMemory ShardedModule::memory() const {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  ShardingMemory out;
  out.full_bytes = state_->full_bytes;
  out.peak_full_bytes = state_->peak_full_bytes;
  for (const auto& unit : state_->units) {
    if (unit.members.empty()) continue;
    out.shard_bytes += unit.bytes(unit.shard_numel);
    out.total_param_bytes += unit.bytes(unit.total);
    out.largest_unit_bytes = std::max(out.largest_unit_bytes, unit.full_bytes());
  }
  return out;
}

std::vector<ShardedModule::MemberInfo> ShardedModule::members() const {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  std::vector<MemberInfo> out;
  for (const auto& unit : state_->units) {
    for (const auto& m : unit.members) {
      MemberInfo info;
      info.name = m.name;
      info.sizes = m.sizes;
      info.piece_from = unit.shards == 1 ? 0 : m.piece_from;
      info.piece_len = unit.shards == 1 ? m.numel : m.piece_len;
      info.piece = unit.flat_piece(unit.shard, m);
      info.shard_var = m.shard_var;
      out.push_back(std::move(info));
    }
  }
  return out;
}

std::vector<at::Tensor> ShardedModule::gather_pieces(const std::vector<at::Tensor>& pieces) const {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> out;
  std::size_t k = 0;
  for (const auto& unit : state_->units) {
    if (unit.members.empty()) continue;
    // The dtype of the first defined piece (optimizer states may differ from the parameters'); on
    // the device the collectives run on (offload: the host pieces are copied there).
    auto options = unit.compute_options();
    for (std::size_t i = 0; i < unit.members.size(); ++i) {
      if (pieces.at(k + i).defined()) {
        options = options.dtype(pieces[k + i].scalar_type());
        break;
      }
    }
    auto flat = torch::zeros({unit.shard_numel}, options);
    for (const auto& m : unit.members) {
      const auto& piece = pieces.at(k++);
      if (piece.defined()) unit.flat_piece(flat, m).copy_(piece.reshape({-1}));
    }
    at::Tensor full = flat;
    if (unit.shards > 1) {
      full = torch::empty({unit.padded}, options);
      state_->group->all_gather_into(full, flat);
    }
    for (const auto& m : unit.members) {
      out.push_back(full.narrow(0, m.offset, m.numel).view(m.sizes).clone());
    }
  }
  return out;
}

void ShardedModule::refresh_full() {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  torch::NoGradGuard no_grad;
  for (auto& unit : state_->units) {
    if (unit.members.empty() || unit.layout != ParamLayout::Replicated) continue;
    if (unit.shards > 1) {
      state_->group->all_gather_into(unit.full, unit.shard);
    }
  }
}

void ShardedModule::reset_peak_memory() {
  std::lock_guard<std::recursive_mutex> lock(state_->mutex);
  state_->peak_full_bytes = state_->full_bytes;
}

}  // namespace cppfabric::detail
