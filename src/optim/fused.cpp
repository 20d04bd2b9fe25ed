#include "cppfabric/optim/fused.hpp"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_sub.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

#include "../utilities/cuda_graph.hpp"
#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::optim {

namespace detail {

// The per-parameter step counts of the Adam family as float32 scalar tensors on the parameter's
// device (what the fused kernels read), mirrored by `host` (what was last written into them).
// LibTorch's ParamState keeps the count as an int64 on the host; when it differs from `host`
// (a checkpoint was loaded, or the state was replaced) the tensor is refilled from it.
struct FusedStepState {
  struct Entry {
    at::Tensor step;
    int64_t host = 0;
  };
  std::unordered_map<const void*, Entry> entries;

  // Steps whose found_inf was left on a CUDA device. Reading a flag waits for the device, so they
  // are reconciled only when kMaxPending have gathered (one wait per kMaxPending steps), or by
  // sync_steps(); until then the host's counts include the steps the kernel skipped.
  static constexpr std::size_t kMaxPending = 64;
  struct Pending {
    at::Tensor found_inf;
    std::vector<std::pair<const void*, torch::optim::OptimizerParamState*>> members;
  };
  std::vector<Pending> pending;

  // Each param group's learning rate on each device it has parameters on (float32 on CUDA, as
  // the kernels read it; float64 on the CPU, whose kernels read it as a double), with the value
  // last written into it.
  struct Lr {
    at::Tensor value;
    double host = 0;
  };
  std::map<std::tuple<std::size_t, int, int>, Lr> lrs;

  // The learning-rate tensor of param group `group` on `device`, holding `lr`. While a CUDA graph
  // records, a write would be recorded with the value of the moment: the tensor must exist then,
  // and prepare_replay() writes it before each replay.
  const at::Tensor& lr_tensor(std::size_t group, const c10::Device& device, double lr,
                              bool capturing) {
    auto& entry = lrs[{group, static_cast<int>(device.type()), static_cast<int>(device.index())}];
    if (capturing) {
      if (!entry.value.defined()) {
        throw std::logic_error(fmt::format(
            "the fused step of param group {} is being recorded in a CUDA graph before any eager "
            "step or prepare_replay() made its learning-rate tensor on {}: run one step eagerly "
            "first (CapturedStep's warm-up does).",
            group, device.str()));
      }
      return entry.value;
    }
    if (!entry.value.defined()) {
      entry.value = torch::full({}, lr,
                                torch::TensorOptions()
                                    .dtype(device.is_cuda() ? torch::kFloat32 : torch::kFloat64)
                                    .device(device));
      entry.host = lr;
    } else if (entry.host != lr) {
      entry.value.fill_(lr);
      entry.host = lr;
    }
    return entry.value;
  }

  at::Tensor& step_tensor(const at::Tensor& param, int64_t state_step, bool capturing) {
    auto& e = entries[param.unsafeGetTensorImpl()];
    if (capturing && (!e.step.defined() || e.host != state_step)) {
      throw std::logic_error(
          "a fused step is being recorded in a CUDA graph for a parameter whose step count is not "
          "on the device yet (no eager step since it was created or loaded): run one step eagerly "
          "first (CapturedStep's warm-up does).");
    }
    if (!e.step.defined() || e.step.device() != param.device()) {
      e.step = torch::full({}, static_cast<double>(state_step),
                           torch::TensorOptions().dtype(torch::kFloat32).device(param.device()));
      e.host = state_step;
    } else if (e.host != state_step) {
      e.step.fill_(static_cast<double>(state_step));
      e.host = state_step;
    }
    return e.step;
  }
};

}  // namespace detail

namespace {

using detail::FusedStepState;
using ParamStates = ska::flat_hash_map<void*, std::unique_ptr<torch::optim::OptimizerParamState>>;

// `t` (same sizes as `param`) copied into `param`'s strides, e.g. a contiguous gradient or loaded
// state for a channels_last weight.
at::Tensor with_layout_of(const at::Tensor& param, const at::Tensor& t) {
  return at::empty_like(param, t.options()).copy_(t);
}

// A state tensor in its parameter's strides. A recording must find it so already (a copy made
// while recording would be replayed from the old tensor).
at::Tensor state_in_layout(const at::Tensor& param, const at::Tensor& state, bool capturing,
                           const char* what) {
  if (!state.defined() || state.strides() == param.strides()) return state;
  if (capturing) {
    throw std::logic_error(fmt::format(
        "the fused step's {} has strides {} but its parameter {} while a CUDA graph records; run "
        "one step eagerly first (CapturedStep's warm-up does).",
        what, fmt::join(state.strides(), ","), fmt::join(param.strides(), ",")));
  }
  return with_layout_of(param, state);
}

// Checks one parameter for the fused kernels; returns its gradient (in the parameter's strides).
at::Tensor checked_grad(const char* optimizer, std::size_t group, std::size_t index,
                        at::Tensor& param) {
  const auto& grad = param.grad();
  const auto where =
      fmt::format("{}(fused=true): parameter {} of param group {}", optimizer, index, group);
  if (!param.device().is_cpu() && !param.device().is_cuda()) {
    throw std::invalid_argument(fmt::format(
        "{} is on device '{}'; the fused kernels run on 'cpu' and 'cuda'. Use StepOptions{{.fused "
        "= false}} for other devices.",
        where, param.device().str()));
  }
  const auto dtype = param.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kHalf && dtype != at::kBFloat16) {
    throw std::invalid_argument(fmt::format(
        "{} has dtype {}; the fused kernels take float32, float64, float16 and bfloat16.", where,
        c10::toString(dtype)));
  }
  if (grad.is_sparse()) {
    throw std::invalid_argument(fmt::format(
        "{} has a sparse gradient; the fused kernels take dense gradients only.", where));
  }
  if (grad.scalar_type() != dtype || grad.device() != param.device()) {
    throw std::invalid_argument(
        fmt::format("{}: its gradient is {} on {}, the parameter {} on {}; they must match.", where,
                    c10::toString(grad.scalar_type()), grad.device().str(), c10::toString(dtype),
                    param.device().str()));
  }
  if (!param.is_non_overlapping_and_dense()) {
    throw std::invalid_argument(fmt::format(
        "{} is not dense (sizes {}, strides {}); the fused kernels need parameters whose elements "
        "fill their memory (contiguous or channels_last, for example).",
        where, fmt::join(param.sizes(), "x"), fmt::join(param.strides(), ",")));
  }
  // The kernels walk every tensor of a parameter in memory order: the gradient (and the state,
  // see with_layout_of) must have the parameter's strides.
  if (grad.strides() != param.strides()) param.mutable_grad() = with_layout_of(param, grad);
  return param.grad();
}

using DeviceKey = std::tuple<int, int, int>;  // device type, index, dtype
DeviceKey key_of(const at::Tensor& t) {
  return {static_cast<int>(t.device().type()), static_cast<int>(t.device().index()),
          static_cast<int>(t.scalar_type())};
}

at::Tensor on_device(const at::Tensor& t, const c10::Device& device) {
  if (!t.defined() || t.device() == device) return t;
  return t.to(device, utilities::non_blocking_to(device));
}

// Whether the inf flag is set, when it can be read without waiting for a device (CPU tensors).
std::optional<bool> flag_on_host(const at::Tensor& found_inf) {
  if (!found_inf.defined()) return false;
  if (found_inf.device().is_cpu()) return found_inf.item<double>() != 0.0;
  return std::nullopt;
}

void reconcile(FusedStepState& fs, ParamStates& states) {
  for (auto& pending : fs.pending) {
    if (pending.found_inf.item<double>() == 0.0) continue;
    for (auto& [key, state] : pending.members) {
      auto it = states.find(const_cast<void*>(key));
      auto entry = fs.entries.find(key);
      if (it == states.end() || it->second.get() != state || entry == fs.entries.end()) continue;
      // The kernel skipped the step and the device count was put back: follow on the host.
      --entry->second.host;
      if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(state)) {
        adamw->step(entry->second.host);
      } else if (auto* adam = dynamic_cast<torch::optim::AdamParamState*>(state)) {
        adam->step(entry->second.host);
      }
    }
  }
  fs.pending.clear();
}

// Whether the step about to run is being recorded in a CUDA graph (the parameters' device's
// current stream is capturing). One captured step has all its parameters on one device.
bool recording(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) {
      if (p.grad().defined()) return utilities::cuda_stream_capturing(p.device());
    }
  }
  return false;
}

// State created while a graph records would be zeroed by every replay: it must exist before.
void require_state_before_recording(bool capturing, bool exists, const char* optimizer,
                                    std::size_t group, std::size_t index) {
  if (!capturing || exists) return;
  throw std::logic_error(fmt::format(
      "{}: parameter {} of param group {} has no optimizer state yet while its step is being "
      "recorded in a CUDA graph; run one step eagerly first (CapturedStep's warm-up does).",
      optimizer, index, group));
}

// A parameter's Adam/AdamW state, created as LibTorch's first step creates it.
template <typename ParamState, typename Options>
ParamState& adam_state(ParamStates& states, const at::Tensor& p, const Options& o,
                       bool capturing = false) {
  auto& slot = states[p.unsafeGetTensorImpl()];
  if (!slot) {
    auto fresh = std::make_unique<ParamState>();
    fresh->step(0);
    fresh->exp_avg(torch::zeros_like(p, at::MemoryFormat::Preserve));
    fresh->exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
    slot = std::move(fresh);
  }
  auto& s = static_cast<ParamState&>(*slot);
  if (o.amsgrad() && !s.max_exp_avg_sq().defined()) {
    s.max_exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
  }
  // Loaded state is contiguous; a channels_last parameter needs its own strides (fused kernels).
  s.exp_avg(state_in_layout(p, s.exp_avg(), capturing, "exp_avg"));
  s.exp_avg_sq(state_in_layout(p, s.exp_avg_sq(), capturing, "exp_avg_sq"));
  if (o.amsgrad())
    s.max_exp_avg_sq(state_in_layout(p, s.max_exp_avg_sq(), capturing, "max_exp_avg_sq"));
  return s;
}

// The foreach steps take dense gradients only (as LibTorch's loop).
void require_dense_grad(const char* optimizer, std::size_t group, std::size_t index,
                        const at::Tensor& param) {
  if (!param.grad().is_sparse()) return;
  throw std::invalid_argument(fmt::format(
      "{}(foreach=true): parameter {} of param group {} has a sparse gradient; use "
      "StepOptions{{.fused = false, .foreach = false}} (LibTorch's loop) for sparse gradients.",
      optimizer, index, group));
}

template <typename Options, typename ParamState, typename Kernel>
void adam_family_step(const char* name, torch::optim::Optimizer& optimizer, FusedStepState& fs,
                      const at::Tensor& grad_scale, const at::Tensor& found_inf, Kernel kernel) {
  torch::NoGradGuard no_grad;
  auto& states = optimizer.state();
  // Recorded into a CUDA graph, nothing here runs now: the host neither reads the device nor
  // counts the step (sync_steps() reads the counts after replays).
  const bool capturing = recording(optimizer);
  if (!capturing && fs.pending.size() >= FusedStepState::kMaxPending) reconcile(fs, states);
  // A flag readable on the host (CPU) is acted on here: a set flag skips the step as the kernel
  // would (gradients untouched), a clear one is not passed on.
  const auto skipped_on_host = flag_on_host(found_inf);
  if (skipped_on_host == true) return;
  const at::Tensor device_inf = skipped_on_host.has_value() ? at::Tensor() : found_inf;
  std::size_t group_index = 0;
  for (auto& group : optimizer.param_groups()) {
    auto& o = static_cast<Options&>(group.options());
    struct Lists {
      std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
      std::vector<std::pair<const void*, torch::optim::OptimizerParamState*>> members;
    };
    std::map<DeviceKey, Lists> by_device;
    std::size_t index = 0;
    for (auto& p : group.params()) {
      const std::size_t i = index++;
      if (!p.grad().defined()) continue;
      auto grad = checked_grad(name, group_index, i, p);
      require_state_before_recording(capturing, states.count(p.unsafeGetTensorImpl()) != 0, name,
                                     group_index, i);
      auto& s = adam_state<ParamState>(states, p, o, capturing);
      auto& lists = by_device[key_of(p)];
      lists.params.push_back(p);
      lists.grads.push_back(grad);
      lists.exp_avgs.push_back(s.exp_avg());
      lists.exp_avg_sqs.push_back(s.exp_avg_sq());
      if (o.amsgrad()) lists.max_exp_avg_sqs.push_back(s.max_exp_avg_sq());
      lists.steps.push_back(fs.step_tensor(p, s.step(), capturing));
      lists.members.emplace_back(p.unsafeGetTensorImpl(), &s);
    }
    const auto [beta1, beta2] = o.betas();
    for (auto& [key, lists] : by_device) {
      const auto device = lists.params.front().device();
      const auto scale = on_device(grad_scale, device);
      // 0 or 1 (the kernels test for 1; a GradScaler sums the flags of several devices).
      const auto inf =
          device_inf.defined() ? on_device(device_inf, device).ne(0).to(at::kFloat) : at::Tensor();
      at::_foreach_add_(lists.steps, 1);
      kernel(lists.params, lists.grads, lists.exp_avgs, lists.exp_avg_sqs, lists.max_exp_avg_sqs,
             lists.steps, fs.lr_tensor(group_index, device, o.lr(), capturing), beta1, beta2,
             o.weight_decay(), o.eps(), o.amsgrad(),
             /*maximize=*/false, scale.defined() ? std::optional<at::Tensor>(scale) : std::nullopt,
             inf.defined() ? std::optional<at::Tensor>(inf) : std::nullopt);
      if (inf.defined()) {
        at::_foreach_sub_(lists.steps, std::vector<at::Tensor>(lists.steps.size(), inf));
      }
      if (capturing) continue;
      for (auto& [impl, state] : lists.members) {
        auto& entry = fs.entries[impl];
        static_cast<ParamState*>(state)->step(++entry.host);
      }
      if (inf.defined()) fs.pending.push_back({inf, std::move(lists.members)});
    }
    ++group_index;
  }
}

// prepare_replay(): each param group's lr() into its tensor on each device it has parameters on.
void write_lr_tensors(FusedStepState& fs, torch::optim::Optimizer& optimizer) {
  std::size_t group_index = 0;
  for (auto& group : optimizer.param_groups()) {
    const double lr = group.options().get_lr();
    for (const auto& p : group.params()) fs.lr_tensor(group_index, p.device(), lr, false);
    ++group_index;
  }
}

// sync_steps(): the device counts (the truth after replays of a recorded step) into the host's
// state, one read per device; what was pending is settled by them.
template <typename ParamState>
void read_device_steps(FusedStepState& fs, torch::optim::Optimizer& optimizer) {
  struct Read {
    std::vector<at::Tensor> counts;
    std::vector<std::pair<FusedStepState::Entry*, ParamState*>> targets;
  };
  std::map<std::pair<int, int>, Read> by_device;
  auto& states = optimizer.state();
  for (auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) {
      auto state = states.find(p.unsafeGetTensorImpl());
      auto entry = fs.entries.find(p.unsafeGetTensorImpl());
      if (state == states.end() || entry == fs.entries.end() || !entry->second.step.defined())
        continue;
      auto* param_state = static_cast<ParamState*>(state->second.get());
      // A count that differs from the host mirror was loaded or set since: it is the truth, and
      // the next step puts it on the device.
      if (param_state->step() != entry->second.host) continue;
      auto& read = by_device[{static_cast<int>(p.device().type()), p.device().index()}];
      read.counts.push_back(entry->second.step);
      read.targets.emplace_back(&entry->second, param_state);
    }
  }
  for (auto& [device, read] : by_device) {
    const at::Tensor counts = at::stack(read.counts).to(at::kCPU, at::kDouble);
    const auto* values = counts.const_data_ptr<double>();
    for (std::size_t i = 0; i < read.targets.size(); ++i) {
      auto [entry, state] = read.targets[i];
      entry->host = static_cast<int64_t>(std::llround(values[i]));
      state->step(entry->host);
    }
  }
  fs.pending.clear();
}

std::string fused_only(const char* optimizer, const StepOptions& options) {
  if (options.fused) return {};
  return fmt::format(
      "{} with StepOptions{{.fused = false}} steps with host-side arithmetic that a CUDA graph "
      "would freeze; use .fused = true (the default) to record its step",
      optimizer);
}

at::Tensor run_closure(const torch::optim::Optimizer::LossClosure& closure) {
  if (!closure) return {};
  at::AutoGradMode enable_grad(true);
  return closure();
}

// Divides the gradients by `grad_scale` and reports whether `found_inf` is set (the host-side
// fallback of step_scaled when the fused kernels are off).
bool unscale_on_host(torch::optim::Optimizer& optimizer, const at::Tensor& grad_scale,
                     const at::Tensor& found_inf) {
  torch::NoGradGuard no_grad;
  if (found_inf.defined() && found_inf.item<double>() != 0.0) return true;
  if (grad_scale.defined()) {
    for (auto& group : optimizer.param_groups()) {
      for (auto& p : group.params()) {
        if (p.grad().defined()) p.mutable_grad().div_(on_device(grad_scale, p.device()));
      }
    }
  }
  return false;
}

// Python's foreach=True step of Adam (L2 weight decay on the gradient) and AdamW (decoupled weight
// decay): the same arithmetic as LibTorch's loop, as multi-tensor operations per device and dtype.
template <typename Options, typename ParamState>
void adam_family_foreach(const char* name, torch::optim::Optimizer& optimizer, bool decoupled) {
  torch::NoGradGuard no_grad;
  auto& states = optimizer.state();
  std::size_t group_index = 0;
  for (auto& group : optimizer.param_groups()) {
    auto& o = static_cast<Options&>(group.options());
    struct Lists {
      std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs;
      std::vector<c10::Scalar> step_sizes, bias_correction2_sqrts;
    };
    std::map<DeviceKey, Lists> by_device;
    const auto [beta1, beta2] = o.betas();
    std::size_t index = 0;
    for (auto& p : group.params()) {
      const std::size_t i = index++;
      if (!p.grad().defined()) continue;
      require_dense_grad(name, group_index, i, p);
      auto& s = adam_state<ParamState>(states, p, o);
      s.step(s.step() + 1);
      const auto step = static_cast<double>(s.step());
      auto& lists = by_device[key_of(p)];
      lists.params.push_back(p);
      lists.grads.push_back(p.grad());
      lists.exp_avgs.push_back(s.exp_avg());
      lists.exp_avg_sqs.push_back(s.exp_avg_sq());
      if (o.amsgrad()) lists.max_exp_avg_sqs.push_back(s.max_exp_avg_sq());
      lists.step_sizes.emplace_back(-o.lr() / (1 - std::pow(beta1, step)));
      lists.bias_correction2_sqrts.emplace_back(std::sqrt(1 - std::pow(beta2, step)));
    }
    for (auto& [key, l] : by_device) {
      auto grads = l.grads;
      if (o.weight_decay() != 0) {
        if (decoupled) {
          at::_foreach_mul_(l.params, 1 - o.lr() * o.weight_decay());
        } else {
          grads = at::_foreach_add(grads, l.params, o.weight_decay());
        }
      }
      at::_foreach_mul_(l.exp_avgs, beta1);
      at::_foreach_add_(l.exp_avgs, grads, 1 - beta1);
      at::_foreach_mul_(l.exp_avg_sqs, beta2);
      at::_foreach_addcmul_(l.exp_avg_sqs, grads, grads, 1 - beta2);
      if (o.amsgrad()) at::_foreach_maximum_(l.max_exp_avg_sqs, l.exp_avg_sqs);
      auto denom = at::_foreach_sqrt(o.amsgrad() ? l.max_exp_avg_sqs : l.exp_avg_sqs);
      at::_foreach_div_(denom, l.bias_correction2_sqrts);
      at::_foreach_add_(denom, o.eps());
      at::_foreach_addcdiv_(l.params, l.exp_avgs, denom, l.step_sizes);
    }
    ++group_index;
  }
}

// Python's foreach=True step of SGD: LibTorch's loop (weight decay, momentum with dampening,
// Nesterov) as multi-tensor operations; a first step sets the momentum buffer to the gradient.
void sgd_foreach(torch::optim::Optimizer& optimizer) {
  torch::NoGradGuard no_grad;
  auto& states = optimizer.state();
  std::size_t group_index = 0;
  for (auto& group : optimizer.param_groups()) {
    auto& o = static_cast<torch::optim::SGDOptions&>(group.options());
    const bool momentum = o.momentum() != 0;
    struct Lists {
      std::vector<at::Tensor> params, grads, buffers;
      std::vector<std::size_t> fresh;  // positions whose buffer starts as the gradient
    };
    std::map<DeviceKey, Lists> by_device;
    std::size_t index = 0;
    for (auto& p : group.params()) {
      const std::size_t i = index++;
      if (!p.grad().defined()) continue;
      require_dense_grad("SGD", group_index, i, p);
      auto& lists = by_device[key_of(p)];
      if (momentum) {
        auto& slot = states[p.unsafeGetTensorImpl()];
        if (!slot) slot = std::make_unique<torch::optim::SGDParamState>();
        auto& s = static_cast<torch::optim::SGDParamState&>(*slot);
        if (!s.momentum_buffer().defined()) {
          s.momentum_buffer(torch::empty_like(p, at::MemoryFormat::Preserve));
          lists.fresh.push_back(lists.params.size());
        }
        lists.buffers.push_back(s.momentum_buffer());
      }
      lists.params.push_back(p);
      lists.grads.push_back(p.grad());
    }
    for (auto& [key, l] : by_device) {
      auto grads = l.grads;
      if (o.weight_decay() != 0) grads = at::_foreach_add(grads, l.params, o.weight_decay());
      if (momentum) {
        at::_foreach_mul_(l.buffers, o.momentum());
        at::_foreach_add_(l.buffers, grads, 1 - o.dampening());
        for (const auto position : l.fresh) l.buffers[position].copy_(grads[position]);
        if (o.nesterov()) {
          grads = at::_foreach_add(grads, l.buffers, o.momentum());
        } else {
          grads = l.buffers;
        }
      }
      at::_foreach_add_(l.params, grads, -o.lr());
    }
    ++group_index;
  }
}

}  // namespace

// ------------------------------------------------------------------------------ AdamW, Adam

namespace {

// What differs between AdamW and Adam: the name in errors, the parameter state, the fused kernel
// and where the weight decay goes.
template <typename Base>
struct AdamKind;
template <>
struct AdamKind<torch::optim::AdamW> {
  static constexpr const char* name = "AdamW";
  using ParamState = torch::optim::AdamWParamState;
  static constexpr bool decoupled = true;
  static void kernel(auto&&... args) { at::_fused_adamw_(args...); }
};
template <>
struct AdamKind<torch::optim::Adam> {
  static constexpr const char* name = "Adam";
  using ParamState = torch::optim::AdamParamState;
  static constexpr bool decoupled = false;
  static void kernel(auto&&... args) { at::_fused_adam_(args...); }
};

}  // namespace

namespace detail {

template <typename Base, typename Options>
AdamFamily<Base, Options>::AdamFamily(std::vector<at::Tensor> params, Options defaults,
                                      StepOptions step_options)
    : Base(std::move(params), std::move(defaults)),
      step_options_(step_options),
      fused_(std::make_unique<FusedStepState>()) {}

template <typename Base, typename Options>
AdamFamily<Base, Options>::AdamFamily(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                                      Options defaults, StepOptions step_options)
    : Base(std::move(param_groups), std::move(defaults)),
      step_options_(step_options),
      fused_(std::make_unique<FusedStepState>()) {}

template <typename Base, typename Options>
AdamFamily<Base, Options>::~AdamFamily() = default;

template <typename Base, typename Options>
at::Tensor AdamFamily<Base, Options>::step(torch::optim::Optimizer::LossClosure closure) {
  using Kind = AdamKind<Base>;
  if (!step_options_.fused && !step_options_.foreach) return Base::step(std::move(closure));
  auto loss = run_closure(closure);
  if (!step_options_.fused) {
    adam_family_foreach<Options, typename Kind::ParamState>(Kind::name, *this, Kind::decoupled);
    return loss;
  }
  adam_family_step<Options, typename Kind::ParamState>(
      Kind::name, *this, *fused_, {}, {}, [](auto&&... args) { Kind::kernel(args...); });
  return loss;
}

template <typename Base, typename Options>
void AdamFamily<Base, Options>::step_scaled(const at::Tensor& grad_scale,
                                            const at::Tensor& found_inf) {
  using Kind = AdamKind<Base>;
  if (!step_options_.fused) {
    if (!unscale_on_host(*this, grad_scale, found_inf)) step();
    return;
  }
  adam_family_step<Options, typename Kind::ParamState>(
      Kind::name, *this, *fused_, grad_scale, found_inf,
      [](auto&&... args) { Kind::kernel(args...); });
}

template <typename Base, typename Options>
std::string AdamFamily<Base, Options>::graph_safe_error() const {
  return fused_only(AdamKind<Base>::name, step_options_);
}

template <typename Base, typename Options>
void AdamFamily<Base, Options>::prepare_replay() {
  write_lr_tensors(*fused_, *this);
}

template <typename Base, typename Options>
void AdamFamily<Base, Options>::sync_steps() {
  read_device_steps<typename AdamKind<Base>::ParamState>(*fused_, *this);
}

template <typename Base, typename Options>
std::vector<double> AdamFamily<Base, Options>::graph_constants() const {
  std::vector<double> out;
  for (const auto& group : this->param_groups()) {
    const auto& o = static_cast<const Options&>(group.options());
    out.insert(out.end(), {static_cast<double>(group.params().size()), std::get<0>(o.betas()),
                           std::get<1>(o.betas()), o.eps(), o.weight_decay(),
                           static_cast<double>(o.amsgrad())});
  }
  return out;
}

template class AdamFamily<torch::optim::AdamW, torch::optim::AdamWOptions>;
template class AdamFamily<torch::optim::Adam, torch::optim::AdamOptions>;

}  // namespace detail

// -------------------------------------------------------------------------------------- SGD

namespace {

void sgd_step(torch::optim::Optimizer& optimizer, FusedStepState& fs, const at::Tensor& grad_scale,
              const at::Tensor& found_inf) {
  torch::NoGradGuard no_grad;
  auto& states = optimizer.state();
  const bool capturing = recording(optimizer);
  const auto skipped_on_host = flag_on_host(found_inf);
  if (skipped_on_host == true) return;  // as the kernel: no update, gradients untouched
  const at::Tensor device_inf = skipped_on_host.has_value() ? at::Tensor() : found_inf;
  std::size_t group_index = 0;
  for (auto& group : optimizer.param_groups()) {
    auto& o = static_cast<torch::optim::SGDOptions&>(group.options());
    const bool momentum = o.momentum() != 0;
    // Parameters whose momentum buffer exists, and those on their first step (the kernel then
    // sets the buffer to the gradient, as LibTorch's clone does): separate kernel calls.
    struct Lists {
      std::vector<at::Tensor> params, grads, buffers;
    };
    std::map<std::pair<DeviceKey, bool>, Lists> by_device;
    std::size_t index = 0;
    for (auto& p : group.params()) {
      const std::size_t i = index++;
      if (!p.grad().defined()) continue;
      auto grad = checked_grad("SGD", group_index, i, p);
      bool first = false;
      at::Tensor buffer;
      if (momentum) {
        auto& slot = states[p.unsafeGetTensorImpl()];
        auto* s = static_cast<torch::optim::SGDParamState*>(slot.get());
        require_state_before_recording(capturing, s != nullptr && s->momentum_buffer().defined(),
                                       "SGD", group_index, i);
        if (s == nullptr || !s->momentum_buffer().defined()) {
          first = !device_inf.defined();
          // With an inf flag left on the device the first step cannot be told apart: start from
          // a zero buffer (equal to the first step's buffer = gradient when dampening is 0).
          auto fresh = first ? torch::empty_like(p, at::MemoryFormat::Preserve)
                             : torch::zeros_like(p, at::MemoryFormat::Preserve);
          if (s == nullptr) {
            auto made = std::make_unique<torch::optim::SGDParamState>();
            s = made.get();
            slot = std::move(made);
          }
          s->momentum_buffer(fresh);
        }
        s->momentum_buffer(state_in_layout(p, s->momentum_buffer(), capturing, "momentum_buffer"));
        buffer = s->momentum_buffer();
      }
      auto& lists = by_device[{key_of(p), first}];
      lists.params.push_back(p);
      lists.grads.push_back(grad);
      if (momentum) lists.buffers.push_back(buffer);
    }
    for (auto& [key, lists] : by_device) {
      const auto device = lists.params.front().device();
      const auto scale = on_device(grad_scale, device);
      const auto inf =
          device_inf.defined() ? on_device(device_inf, device).ne(0).to(at::kFloat) : at::Tensor();
      at::_fused_sgd_(lists.params, lists.grads, lists.buffers, o.weight_decay(), o.momentum(),
                      fs.lr_tensor(group_index, device, o.lr(), capturing), o.dampening(),
                      o.nesterov(), /*maximize=*/false,
                      /*is_first_step=*/key.second,
                      scale.defined() ? std::optional<at::Tensor>(scale) : std::nullopt,
                      inf.defined() ? std::optional<at::Tensor>(inf) : std::nullopt);
    }
    ++group_index;
  }
}

}  // namespace

SGD::SGD(std::vector<at::Tensor> params, torch::optim::SGDOptions defaults,
         StepOptions step_options)
    : torch::optim::SGD(std::move(params), std::move(defaults)),
      step_options_(step_options),
      fused_(std::make_unique<detail::FusedStepState>()) {}

SGD::SGD(std::vector<torch::optim::OptimizerParamGroup> param_groups,
         torch::optim::SGDOptions defaults, StepOptions step_options)
    : torch::optim::SGD(std::move(param_groups), std::move(defaults)),
      step_options_(step_options),
      fused_(std::make_unique<detail::FusedStepState>()) {}

SGD::~SGD() = default;

at::Tensor SGD::step(LossClosure closure) {
  if (!step_options_.fused && !step_options_.foreach) {
    return torch::optim::SGD::step(std::move(closure));
  }
  auto loss = run_closure(closure);
  if (step_options_.fused) {
    sgd_step(*this, *fused_, {}, {});
  } else {
    sgd_foreach(*this);
  }
  return loss;
}

void SGD::step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf) {
  if (!step_options_.fused) {
    if (!unscale_on_host(*this, grad_scale, found_inf)) step();
    return;
  }
  sgd_step(*this, *fused_, grad_scale, found_inf);
}

std::string SGD::graph_safe_error() const { return fused_only("SGD", step_options_); }

void SGD::prepare_replay() { write_lr_tensors(*fused_, *this); }

std::vector<double> SGD::graph_constants() const {
  std::vector<double> out;
  for (const auto& group : param_groups()) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(group.options());
    out.insert(out.end(), {static_cast<double>(group.params().size()), o.momentum(), o.dampening(),
                           o.weight_decay(), static_cast<double>(o.nesterov())});
  }
  return out;
}

}  // namespace cppfabric::optim
