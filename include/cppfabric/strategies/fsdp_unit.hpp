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
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>

namespace cppfabric::detail {
class ShardedModule;
}

namespace cppfabric::strategies {

/// The part of every FSDPUnitImpl that the strategy talks to.
class FSDPUnitBase {
 public:
  virtual ~FSDPUnitBase();
  /// Called by FSDPStrategy::setup_module; `alive` expires when the sharded module is destroyed
  /// (strategy teardown), after which the unit runs as its plain module again.
  void fsdp_bind(detail::ShardedModule* owner, std::size_t index, std::weak_ptr<void> alive);
  bool fsdp_bound() const { return owner_ != nullptr && !alive_.expired(); }

 protected:
  void fsdp_before_forward();
  at::Tensor fsdp_after_forward(const at::Tensor& output);
  void fsdp_after_forward_untracked();

 private:
  detail::ShardedModule* live_owner() const { return fsdp_bound() ? owner_ : nullptr; }

  detail::ShardedModule* owner_ = nullptr;
  std::size_t index_ = 0;
  std::weak_ptr<void> alive_;
};

template <typename Impl>
class FSDPUnitImpl : public Impl, public FSDPUnitBase {
 public:
  using Impl::Impl;

  template <typename... Args>
  decltype(auto) forward(Args&&... args) {
    using Result = decltype(std::declval<Impl&>().forward(std::forward<Args>(args)...));
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
