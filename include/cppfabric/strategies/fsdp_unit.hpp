// FSDPUnit<Impl>: declares a submodule an FSDP unit. Use it where you would use the module's
// holder (what TORCH_MODULE(Block) defines); parameter names and forward stay the same.
//
//   #include <cppfabric/strategies/fsdp_unit.hpp>
//   struct NetImpl : torch::nn::Module {
//     NetImpl() {
//       for (int i = 0; i < 8; ++i)
//         blocks.push_back(register_module("block" + std::to_string(i),
//                                          cppfabric::strategies::FSDPUnit<BlockImpl>(1024)));
//       head = register_module("head", torch::nn::Linear(1024, 10));
//     }
//     at::Tensor forward(at::Tensor x) {
//       for (auto& block : blocks) x = block(x);   // gathers, runs, frees block's parameters
//       return head(x);
//     }
//     std::vector<cppfabric::strategies::FSDPUnit<BlockImpl>> blocks;
//     torch::nn::Linear head{nullptr};
//   };
//
// Under FSDPStrategy each unit's parameters are all-gathered just before its forward and (with
// FULL_SHARD) freed right after it, then gathered again when backward reaches the unit's output.
// That needs the unit's forward to return one at::Tensor; a unit whose forward returns anything
// else keeps its parameters from forward until its backward is done (as SHARD_GRAD_OP). Under any
// other strategy, or before fabric.setup, an FSDPUnit is exactly its module. Units may not be
// shared between two set-up modules.
//
// Activation checkpointing (FSDPOptions::activation_checkpointing_policy, Python's
// `activation_checkpointing_policy`): a selected unit runs its forward without recording the
// autograd graph and keeps only its tensor arguments; when backward reaches its output it gathers
// its parameters again, re-runs the forward with the CPU (and CUDA) generator and autocast state of
// the first run (dropout draws the same numbers) and backpropagates through that. It needs a
// forward that returns one at::Tensor and takes at::Tensor arguments (by value or const&) and
// copyable non-tensor values; anything else throws at the unit's first forward.
//
//   auto fsdp = std::make_shared<FSDPStrategy>(FSDPOptions{
//       .activation_checkpointing_policy = checkpoint_module_types<BlockImpl>()});
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Type.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cppfabric/strategies/fsdp.hpp"

namespace cppfabric::detail {
class ShardedModule;

template <typename T>
inline constexpr bool is_tensor_arg = std::is_same_v<std::decay_t<T>, at::Tensor>;
// Arguments that hold tensors the checkpoint could not detach and save.
template <typename T>
inline constexpr bool holds_tensors = std::is_same_v<std::decay_t<T>, std::optional<at::Tensor>> ||
                                      std::is_same_v<std::decay_t<T>, std::vector<at::Tensor>> ||
                                      std::is_same_v<std::decay_t<T>, at::TensorList>;
template <typename T>
inline constexpr bool checkpointable_arg = is_tensor_arg<T> ||
                                           (!holds_tensors<T> &&
                                            std::is_copy_constructible_v<std::decay_t<T>>);
}  // namespace cppfabric::detail

namespace cppfabric::strategies {

/// The units whose module is one of `Impls` (or derives from one), as Python's
/// `activation_checkpointing_policy={Block, ...}`:
///   FSDPOptions{.activation_checkpointing_policy = checkpoint_module_types<BlockImpl>()}
template <typename... Impls>
ActivationCheckpointingPolicy checkpoint_module_types() {
  static_assert(sizeof...(Impls) > 0, "checkpoint_module_types needs at least one module type");
  return [](const std::string&, const torch::nn::Module& unit) {
    return (... || (dynamic_cast<const Impls*>(&unit) != nullptr));
  };
}

/// The part of every FSDPUnitImpl that the strategy talks to.
class FSDPUnitBase {
 public:
  virtual ~FSDPUnitBase();
  /// Called by FSDPStrategy::setup_module; `alive` expires when the sharded module is destroyed
  /// (strategy teardown), after which the unit runs as its plain module again.
  void fsdp_bind(detail::ShardedModule* owner, std::size_t index, std::weak_ptr<void> alive);
  bool fsdp_bound() const { return owner_ != nullptr && !alive_.expired(); }
  /// Called by FSDPStrategy::setup_module: the unit's name in the set-up module, and whether
  /// activation_checkpointing_policy selected it.
  void fsdp_configure(std::string name, bool checkpoint_activations);
  /// Whether this unit recomputes its activations in backward (set up under FSDP and selected).
  bool fsdp_checkpoints_activations() const { return checkpoint_ && fsdp_bound(); }

 protected:
  using Replay = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

  void fsdp_before_forward();
  at::Tensor fsdp_after_forward(const at::Tensor& output);
  void fsdp_after_forward_untracked();
  /// True when this forward call is to be checkpointed: selected, bound, and grad mode on.
  bool fsdp_checkpoint_this_call() const;
  /// Gathers the unit, runs `replay(inputs)` without recording autograd, frees the unit
  /// (FULL_SHARD) and returns the output with a node whose backward gathers the unit again and
  /// runs `replay` on the saved inputs with grad (strategies/activation_checkpoint.cpp).
  /// `params`: the module's parameters.
  at::Tensor fsdp_checkpointed_forward(std::vector<at::Tensor> inputs,
                                       std::vector<at::Tensor> params, Replay replay);
  [[noreturn]] void fsdp_checkpoint_unsupported(const std::string& result_type,
                                                const std::string& argument_types) const;
  /// For the replay: the module itself, so that a destroyed unit is reported, not used.
  virtual std::weak_ptr<torch::nn::Module> fsdp_module_ref() = 0;

 private:
  detail::ShardedModule* live_owner() const { return fsdp_bound() ? owner_ : nullptr; }

  detail::ShardedModule* owner_ = nullptr;
  std::size_t index_ = 0;
  std::weak_ptr<void> alive_;
  std::string name_;
  bool checkpoint_ = false;
};

template <typename Impl>
class FSDPUnitImpl : public Impl, public FSDPUnitBase {
 public:
  using Impl::Impl;

  template <typename... Args>
  decltype(auto) forward(Args&&... args) {
    using Result = decltype(std::declval<Impl&>().forward(std::forward<Args>(args)...));
    if (fsdp_checkpoint_this_call()) {
      if constexpr (std::is_same_v<std::decay_t<Result>, at::Tensor> &&
                    (detail::checkpointable_arg<Args> && ...) &&
                    requires(Impl & m, std::decay_t<Args> & ... a) { m.forward(a...); }) {
        return checkpointed(std::forward<Args>(args)...);
      } else {
        std::string argument_types;
        (argument_types.append(argument_types.empty() ? "" : ", ")
             .append(c10::demangle_type<Args>()),
         ...);
        fsdp_checkpoint_unsupported(c10::demangle_type<Result>(), argument_types);
      }
    }
    fsdp_before_forward();
    if constexpr (std::is_same_v<std::decay_t<Result>, at::Tensor>) {
      return fsdp_after_forward(Impl::forward(std::forward<Args>(args)...));
    } else if constexpr (std::is_void_v<Result>) {
      Impl::forward(std::forward<Args>(args)...);
      fsdp_after_forward_untracked();
    } else {
      Result out = Impl::forward(std::forward<Args>(args)...);
      fsdp_after_forward_untracked();
      return out;
    }
  }

 protected:
  std::weak_ptr<torch::nn::Module> fsdp_module_ref() override { return this->weak_from_this(); }

 private:
  // The arguments are kept (tensors as undefined placeholders, the tensors themselves go to the
  // checkpoint node); each run copies them and puts the given tensors back in order.
  template <typename... Args>
  at::Tensor checkpointed(Args&&... args) {
    using Saved = std::tuple<std::decay_t<Args>...>;
    auto saved = std::make_shared<Saved>(std::forward<Args>(args)...);
    std::vector<at::Tensor> inputs;
    std::apply(
        [&inputs](auto&... a) {
          (
              [&inputs](auto& arg) {
                if constexpr (detail::is_tensor_arg<decltype(arg)>) {
                  inputs.push_back(std::move(arg));
                  arg = at::Tensor();
                }
              }(a),
              ...);
        },
        *saved);
    std::weak_ptr<torch::nn::Module> self = fsdp_module_ref();
    Replay replay = [saved, self](const std::vector<at::Tensor>& tensors) -> at::Tensor {
      auto module = self.lock();
      auto* impl = dynamic_cast<FSDPUnitImpl*>(module.get());
      if (impl == nullptr) return at::Tensor();  // reported by the caller
      Saved call = *saved;
      std::size_t k = 0;
      std::apply(
          [&tensors, &k](auto&... a) {
            (
                [&tensors, &k](auto& arg) {
                  if constexpr (detail::is_tensor_arg<decltype(arg)>) arg = tensors.at(k++);
                }(a),
                ...);
          },
          call);
      return std::apply([impl](auto&... a) -> at::Tensor { return impl->Impl::forward(a...); },
                        call);
    };
    return fsdp_checkpointed_forward(std::move(inputs), this->parameters(), std::move(replay));
  }
};

template <typename Impl>
class FSDPUnit : public torch::nn::ModuleHolder<FSDPUnitImpl<Impl>> {
 public:
  using torch::nn::ModuleHolder<FSDPUnitImpl<Impl>>::ModuleHolder;

  /// Calls the unit's forward (ModuleHolder's own operator() cannot see a template forward).
  template <typename... Args>
  decltype(auto) operator()(Args&&... args) {
    return this->get()->forward(std::forward<Args>(args)...);
  }
};

}  // namespace cppfabric::strategies
