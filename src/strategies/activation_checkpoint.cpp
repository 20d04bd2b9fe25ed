// Activation checkpointing for FSDP inner units: LibTorch's C++ API has no
// torch.utils.checkpoint, so this is one, in its reentrant form, bound to FSDP's gather/free.
//
// Forward (grad mode on, unit selected): the unit is gathered, its forward runs without recording
// autograd, and the output gets one node, CheckpointBackward, whose next edges are the unit's
// tensor arguments; the node saves only those arguments (plus the RNG and autocast state of the
// moment). FULL_SHARD then frees the unit as after any forward. The node is attached even when no
// argument requires grad (the first unit gets the data batch): the parameters still need their
// gradients. torch's reentrant checkpoint would return an output without grad there; Python
// Fabric uses the non-reentrant variant, which does not, and this follows it.
//
// Backward (the engine reaches the node): the unit is gathered again (and the backward pass marked
// started, as the PreBackward node of an ordinary unit does), the forward runs again with grad on
// detached copies of the saved arguments under the saved RNG and autocast state, and a nested
// (reentrant) backward from the new output accumulates the parameters' gradients. Those go through
// the parameters' own gradient accumulators, so the hooks that reduce-scatter a finished unit and
// free it fire exactly as without checkpointing. The node returns the detached arguments'
// gradients. The surrounding RNG state is put back afterwards, so checkpointing does not change
// what later random draws give.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/torch.h>

#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/precision/autocast.hpp"
#include "cppfabric/strategies/fsdp.hpp"
#include "cppfabric/strategies/fsdp_unit.hpp"
#include "strategies/sharding.hpp"

namespace cppfabric::strategies {

namespace {

// The default generators' states: the CPU one always, the CUDA ones of the devices the unit's
// tensors are on (as torch stashes the devices of the checkpointed function's tensor arguments).
struct RngState {
  std::vector<std::pair<at::Generator, at::Tensor>> states;

  static RngState capture(const std::set<c10::DeviceIndex>& cuda_devices) {
    RngState out;
    auto take = [&out](at::Generator gen) {
      std::lock_guard<std::mutex> lock(gen.mutex());
      auto state = gen.get_state();
      out.states.emplace_back(std::move(gen), std::move(state));
    };
    take(at::detail::getDefaultCPUGenerator());
    for (auto index : cuda_devices) {
      take(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, index)));
    }
    return out;
  }

  void restore() const {
    for (const auto& [gen, state] : states) {
      auto g = gen;
      std::lock_guard<std::mutex> lock(g.mutex());
      g.set_state(state);
    }
  }
};

// Python's torch.random.fork_rng: the forward's states for the replay, then the states of the
// moment back.
class RngFork {
 public:
  RngFork(const RngState& forward, const std::set<c10::DeviceIndex>& cuda_devices)
      : outer_(RngState::capture(cuda_devices)) {
    forward.restore();
  }
  ~RngFork() { outer_.restore(); }
  RngFork(const RngFork&) = delete;
  RngFork& operator=(const RngFork&) = delete;

 private:
  RngState outer_;
};

struct AutocastState {
  bool cpu_enabled = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16;
  bool cuda = false;
  bool cuda_enabled = false;
  c10::ScalarType cuda_dtype = c10::kHalf;
  bool cache_enabled = true;

  static AutocastState capture(bool cuda) {
    AutocastState s;
    s.cpu_enabled = precision::is_autocast_enabled(c10::kCPU);
    s.cpu_dtype = precision::autocast_dtype(c10::kCPU);
    s.cuda = cuda;
    if (cuda) {
      s.cuda_enabled = precision::is_autocast_enabled(c10::kCUDA);
      s.cuda_dtype = precision::autocast_dtype(c10::kCUDA);
    }
    s.cache_enabled = at::autocast::is_autocast_cache_enabled();
    return s;
  }
};

class CheckpointBackward : public torch::autograd::Node {
 public:
  using Replay = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

  std::string name() const override { return "cppfabric::CheckpointBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    std::vector<at::Tensor> inputs;
    Replay replay;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (released_) {
        throw std::runtime_error(fmt::format(
            "FSDP activation checkpointing of unit '{}': backward ran through this unit's "
            "output a second time after its saved inputs were freed. Pass retain_graph=true to "
            "the first backward if you need to backward twice.",
            unit_name_));
      }
      for (const auto& saved : saved_) inputs.push_back(saved.unpack());
      replay = replay_;
    }
    torch::autograd::variable_list result(num_outputs());
    const auto& grad = grads.at(0);
    if (!grad.defined()) return result;  // the output did not reach the loss
    if (!torch::autograd::Engine::get_default_engine().is_checkpoint_valid()) {
      throw std::runtime_error(fmt::format(
          "FSDP activation checkpointing of unit '{}' recomputes the unit in backward and "
          "accumulates into .grad, which torch::autograd::grad() and backward(inputs=...) do not "
          "allow (as torch's reentrant checkpoint). Call fabric.backward(loss) or loss.backward() "
          "without inputs, or leave the unit out of activation_checkpointing_policy.",
          unit_name_));
    }
    if (auto alive = owner_alive_.lock()) owner_->before_unit_recompute(unit_index_);

    std::vector<at::Tensor> detached;
    detached.reserve(inputs.size());
    for (const auto& x : inputs) {
      if (!x.defined()) {
        detached.emplace_back();
        continue;
      }
      auto d = x.detach();
      if (x.requires_grad()) d.set_requires_grad(true);
      detached.push_back(std::move(d));
    }
    at::Tensor output;
    {
      std::optional<RngFork> fork;
      if (preserve_rng_state_) fork.emplace(rng_, cuda_devices_);
      precision::AutocastGuard cpu_autocast(c10::kCPU, autocast_.cpu_dtype, autocast_.cpu_enabled,
                                            autocast_.cache_enabled);
      std::optional<precision::AutocastGuard> cuda_autocast;
      if (autocast_.cuda) {
        cuda_autocast.emplace(c10::kCUDA, autocast_.cuda_dtype, autocast_.cuda_enabled,
                              autocast_.cache_enabled);
      }
      at::AutoGradMode grad_on(true);
      output = replay(detached);
    }
    if (!output.defined()) {
      throw std::runtime_error(
          fmt::format("FSDP activation checkpointing: unit '{}' was destroyed before backward "
                      "reached it, so its forward cannot be run again.",
                      unit_name_));
    }
    if (!output.requires_grad()) return result;
    torch::autograd::backward({output}, {grad});
    for (std::size_t i = 0; i < detached.size() && i < result.size(); ++i) {
      if (detached[i].defined() && detached[i].requires_grad()) result[i] = detached[i].grad();
    }
    return result;
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& saved : saved_) saved.reset_data();
    replay_ = nullptr;
    released_ = true;
  }

  std::vector<torch::autograd::SavedVariable> saved_;
  Replay replay_;
  bool released_ = false;
  bool preserve_rng_state_ = true;
  RngState rng_;
  std::set<c10::DeviceIndex> cuda_devices_;
  AutocastState autocast_;
  std::string unit_name_;
  detail::ShardedModule* owner_ = nullptr;
  std::size_t unit_index_ = 0;
  std::weak_ptr<void> owner_alive_;
};

}  // namespace

ActivationCheckpointingPolicy checkpoint_all_units() {
  return [](const std::string&, const torch::nn::Module&) { return true; };
}

void FSDPUnitBase::fsdp_configure(std::string name, bool checkpoint_activations) {
  name_ = std::move(name);
  checkpoint_ = checkpoint_activations;
}

bool FSDPUnitBase::fsdp_checkpoint_this_call() const {
  return checkpoint_ && live_owner() != nullptr && at::GradMode::is_enabled();
}

void FSDPUnitBase::fsdp_checkpoint_unsupported(const std::string& result_type,
                                               const std::string& argument_types) const {
  throw std::invalid_argument(fmt::format(
      "FSDP activation checkpointing of unit '{}': its forward, called with ({}), returns {}. A "
      "checkpointed unit's forward must return one at::Tensor and take at::Tensor "
      "arguments (by value or const&) and copyable non-tensor values (no "
      "std::optional<at::Tensor>, std::vector<at::Tensor>, at::TensorList or rvalue-reference "
      "parameters). Leave this unit out of FSDPOptions::activation_checkpointing_policy, or "
      "change its forward.",
      name_, argument_types, result_type));
}

at::Tensor FSDPUnitBase::fsdp_checkpointed_forward(std::vector<at::Tensor> inputs,
                                                   std::vector<at::Tensor> params, Replay replay) {
  auto* owner = live_owner();
  if (owner == nullptr) return replay(inputs);
  owner->before_unit_forward(index_);

  bool needs_grad = false;
  std::set<c10::DeviceIndex> cuda_devices;
  auto visit = [&](const at::Tensor& t) {
    if (!t.defined()) return;
    needs_grad = needs_grad || t.requires_grad();
    if (t.is_cuda()) cuda_devices.insert(t.get_device());
  };
  for (const auto& x : inputs) visit(x);
  for (const auto& p : params) visit(p);
  if (!needs_grad) {
    // Nothing to differentiate: no graph would be recorded anyway.
    at::Tensor out = replay(inputs);
    owner->after_unit_checkpointed_forward(index_);
    return out;
  }

  auto node =
      std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
  node->rng_ = RngState::capture(cuda_devices);
  node->cuda_devices_ = cuda_devices;
  node->autocast_ = AutocastState::capture(!cuda_devices.empty());
  at::Tensor output;
  {
    at::AutoGradMode no_grad(false);
    output = replay(inputs);
  }
  owner->after_unit_checkpointed_forward(index_);
  if (!output.defined() ||
      !(at::isFloatingType(output.scalar_type()) || at::isComplexType(output.scalar_type()))) {
    return output;  // nothing to differentiate
  }
  node->set_next_edges(torch::autograd::collect_next_edges(at::TensorList(inputs)));
  node->saved_.reserve(inputs.size());
  for (const auto& x : inputs) node->saved_.emplace_back(x, /*is_output=*/false);
  node->replay_ = std::move(replay);
  node->unit_name_ = name_;
  node->owner_ = owner_;
  node->unit_index_ = index_;
  node->owner_alive_ = alive_;
  // A no-grad output may be a view of an argument; a detached alias takes the history cleanly
  // (and shares the version counter, so in-place changes are still caught in backward).
  output = output.detach();
  torch::autograd::set_history(output, node);
  return output;
}

}  // namespace cppfabric::strategies
