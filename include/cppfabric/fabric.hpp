// Fabric: the five lines that make a LibTorch training loop run anywhere.
//
//   cppfabric::Fabric fabric({.accelerator = "auto", .devices = "auto", .precision = "32-true"});
//   fabric.launch();
//   auto [net, opt] = fabric.setup(model, optimizer);
//   ...
//   fabric.backward(loss);
//
// FabricOptions (options.hpp) mirrors Python's `Fabric(...)` keyword arguments.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cppfabric/callbacks.hpp"
#include "cppfabric/data/dataloader.hpp"
#include "cppfabric/data/fabric_dataloader.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/guard.hpp"
#include "cppfabric/options.hpp"
#include "cppfabric/plugins.hpp"
#include "cppfabric/state.hpp"
#include "cppfabric/strategies/strategy.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "cppfabric/wrappers.hpp"

namespace cppfabric {

/// Arguments of `fabric.clip_gradients`: exactly one of clip_val / max_norm.
struct ClipGradientsOptions {
  std::optional<double> clip_val = std::nullopt;
  std::optional<double> max_norm = std::nullopt;
  double norm_type = 2.0;
  bool error_if_nonfinite = true;
};

namespace detail {
template <typename C>
std::shared_ptr<C> module_ptr(const torch::nn::ModuleHolder<C>& holder) {
  return holder.ptr();
}
template <typename C>
std::shared_ptr<C> module_ptr(const std::shared_ptr<C>& module) {
  static_assert(std::is_base_of_v<torch::nn::Module, C>, "setup() takes a torch::nn::Module");
  return module;
}
template <typename>
using AsFabricOptimizer = FabricOptimizer;
template <typename>
using AsFabricDataLoader = FabricDataLoader;
template <typename T>
inline constexpr bool is_setup_options_v = std::is_same_v<T, SetupOptions>;
template <typename T, typename... Args>
inline constexpr bool last_is_v = [] {
  if constexpr (sizeof...(Args) == 0) {
    return false;
  } else {
    return std::is_same_v<T, std::tuple_element_t<sizeof...(Args) - 1, std::tuple<Args...>>>;
  }
}();
template <typename T>
inline constexpr bool is_fabric_module_v = false;
template <typename M>
inline constexpr bool is_fabric_module_v<FabricModule<M>> = true;
}  // namespace detail

class Fabric {
 public:
  explicit Fabric(FabricOptions options = {});
  ~Fabric();
  Fabric(const Fabric&) = delete;
  Fabric& operator=(const Fabric&) = delete;

  // ---------------------------------------------------------------- launch
  /// Starts the processes this Fabric needs (none on one device) and sets up the environment.
  void launch();
  /// Runs `fn(fabric)` in every process after launching; returns its result.
  template <typename F>
  auto launch(F&& fn) -> std::invoke_result_t<F, Fabric&> {
    launch();
    return std::invoke(std::forward<F>(fn), *this);
  }

  // ---------------------------------------------------------------- setup
  /// Sets up a model and any number of optimizers: returns the FabricModule alone, or a tuple
  /// (FabricModule, FabricOptimizer...) for structured bindings. A trailing SetupOptions stands
  /// for Python's keyword arguments (`move_to_device`). Passing a FabricModule or a
  /// FabricOptimizer again is a compile-time error, as Python's runtime one. Setting up the same
  /// raw model again is accepted on every strategy (as Python does): the strategy wraps it once.
  template <typename ModuleT, typename... Args>
  auto setup(const ModuleT& model, const Args&... args) {
    static_assert(!detail::is_fabric_module_v<ModuleT>,
                  "A model should be passed only once to the `setup` method. Pass the raw module "
                  "(the one you created), not the FabricModule that setup() returned.");
    static_assert(!(std::is_same_v<Args, FabricOptimizer> || ...),
                  "An optimizer should be passed only once to the `setup` method. Pass the raw "
                  "std::shared_ptr<torch::optim::Optimizer>, not the FabricOptimizer that setup() "
                  "returned.");
    constexpr std::size_t count = sizeof...(Args);
    constexpr bool has_options = detail::last_is_v<SetupOptions, Args...>;
    constexpr std::size_t n_opts = has_options ? count - 1 : count;
    static_assert(!(detail::is_setup_options_v<Args> || ...) || has_options,
                  "fabric.setup: SetupOptions goes last, after the model and the optimizers.");
    if constexpr (detail::is_fabric_module_v<ModuleT> ||
                  (std::is_same_v<Args, FabricOptimizer> || ...)) {
      return;  // the static_asserts above said why
    } else {
      SetupOptions options{};
      auto all = std::tie(args...);
      if constexpr (has_options) options = std::get<count - 1>(all);
      // (From ModuleT, not decltype(module): GCC 12 misreads a local's decltype in the lambda.)
      using M = typename decltype(detail::module_ptr(std::declval<const ModuleT&>()))::element_type;
      std::shared_ptr<M> module = detail::module_ptr(model);
      return [&]<std::size_t... I>(std::index_sequence<I...>) {
        std::vector<std::shared_ptr<torch::optim::Optimizer>> opts{
            optimizer_ptr(std::get<I>(all))...};
        auto forward = setup_module_impl(module, opts, options.move_to_device, "setup");
        FabricModule<M> fabric_module(module, forward, strategy(),
                                      module_device(module, options.move_to_device));
        notify_after_setup(*module);
        if constexpr (n_opts == 0) {
          return fabric_module;
        } else {
          return std::tuple<FabricModule<M>,
                            detail::AsFabricOptimizer<std::integral_constant<std::size_t, I>>...>(
              fabric_module, make_optimizer(opts[I])...);
        }
      }
      (std::make_index_sequence<n_opts>{});
    }
  }
  /// Sets up a model alone (no on_after_setup callback), as Python's setup_module.
  template <typename ModuleT>
  auto setup_module(const ModuleT& model, SetupOptions options = {}) {
    static_assert(!detail::is_fabric_module_v<ModuleT>,
                  "A model should be passed only once to the `setup_module` method. Pass the raw "
                  "module, not the FabricModule that setup() returned.");
    if constexpr (detail::is_fabric_module_v<ModuleT>) {
      return;
    } else {
      // (From ModuleT, not decltype(module): GCC 12 misreads a local's decltype in the lambda.)
      using M = typename decltype(detail::module_ptr(std::declval<const ModuleT&>()))::element_type;
      std::shared_ptr<M> module = detail::module_ptr(model);
      auto forward = setup_module_impl(module, {}, options.move_to_device, "setup_module");
      return FabricModule<M>(module, forward, strategy(),
                             module_device(module, options.move_to_device));
    }
  }
  /// The same with Python's positional `move_to_device`.
  template <typename ModuleT>
  auto setup_module(const ModuleT& model, bool move_to_device) {
    return setup_module(model, SetupOptions{.move_to_device = move_to_device});
  }
  /// Sets up optimizers alone: one FabricOptimizer, or a tuple of them.
  template <typename... Opts>
  auto setup_optimizers(const Opts&... optimizers) {
    if constexpr (sizeof...(Opts) == 0) {
      throw_no_optimizers();
    } else {
      static_assert(!(std::is_same_v<Opts, FabricOptimizer> || ...),
                    "An optimizer should be passed only once to the `setup_optimizers` method. "
                    "Pass the raw std::shared_ptr<torch::optim::Optimizer>, not the "
                    "FabricOptimizer that setup() returned.");
      std::vector<std::shared_ptr<torch::optim::Optimizer>> opts{optimizer_ptr(optimizers)...};
      validate_setup_optimizers(opts);
      if constexpr (sizeof...(Opts) == 1) {
        return make_optimizer(opts[0]);
      } else {
        return [&]<std::size_t... I>(std::index_sequence<I...>) {
          return std::tuple<detail::AsFabricOptimizer<Opts>...>(make_optimizer(opts[I])...);
        }
        (std::index_sequence_for<Opts...>{});
      }
    }
  }

  // ---------------------------------------------------------------- dataloaders
  /// Sets up one or more DataLoaders (Python's setup_dataloaders): returns one FabricDataLoader,
  /// or a tuple of them for structured bindings. A trailing SetupDataloadersOptions stands for
  /// Python's keyword arguments use_distributed_sampler / move_to_device. When the strategy
  /// shards data, the loader's sampler is replaced by a DistributedSampler (shuffle when the
  /// original sampler was a RandomSampler, seed from PL_GLOBAL_SEED or 0).
  template <typename... Args>
  requires(
      sizeof...(Args) > 0 &&
      ((std::is_same_v<Args, data::DataLoader> || std::is_same_v<Args, FabricDataLoader> ||
        std::is_same_v<
            Args, SetupDataloadersOptions>)&&...)) auto setup_dataloaders(const Args&... args) {
    constexpr std::size_t count = sizeof...(Args);
    using Last = std::tuple_element_t<count - 1, std::tuple<Args...>>;
    constexpr bool has_options = std::is_same_v<Last, SetupDataloadersOptions>;
    constexpr std::size_t loaders = has_options ? count - 1 : count;
    SetupDataloadersOptions options{};
    if constexpr (has_options) options = std::get<count - 1>(std::tie(args...));
    static_assert(loaders > 0, "setup_dataloaders requires at least one dataloader as input");
    validate_launched("setup_dataloaders");
    if constexpr ((std::is_same_v<Args, FabricDataLoader> || ...)) {
      throw_dataloader_already_setup();
    }
    auto all = std::tie(args...);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      if constexpr (loaders == 1) {
        return setup_dataloader(as_loader(std::get<0>(all)), options);
      } else {
        return std::tuple<detail::AsFabricDataLoader<std::integral_constant<std::size_t, I>>...>(
            setup_dataloader(as_loader(std::get<I>(all)), options)...);
      }
    }
    (std::make_index_sequence<loaders>{});
  }

  // ---------------------------------------------------------------- training
  /// Backward through the strategy and precision plugin (the arguments of at::Tensor::backward).
  void backward(const at::Tensor& tensor, const at::Tensor& gradient = {},
                std::optional<bool> retain_graph = std::nullopt, bool create_graph = false);
  /// Clips by value (returns an undefined tensor) or by norm (returns the norm before clipping).
  at::Tensor clip_gradients(const FabricModuleBase& module, const FabricOptimizer& optimizer,
                            const ClipGradientsOptions& options);
  /// The precision plugin's forward context, for code outside the model's forward.
  Guard autocast();
  /// Skips gradient synchronisation for `module` while the guard lives (gradient accumulation).
  Guard no_backward_sync(const FabricModuleBase& module, bool enabled = true);
  /// Default dtype (and device, where LibTorch allows it) for tensors/modules created meanwhile.
  Guard init_tensor();
  Guard init_module(std::optional<bool> empty_init = std::nullopt);

  // ---------------------------------------------------------------- devices
  at::Tensor to_device(const at::Tensor& tensor) const;
  template <typename C>
  torch::nn::ModuleHolder<C> to_device(const torch::nn::ModuleHolder<C>& module) const {
    move_module(*module.ptr());
    return module;
  }
  template <typename C>
  requires std::is_base_of_v<torch::nn::Module, C> std::shared_ptr<C> to_device(
      const std::shared_ptr<C>& module)
  const {
    move_module(*module);
    return module;
  }
  template <typename T>
  std::vector<T> to_device(const std::vector<T>& items) const {
    std::vector<T> out;
    out.reserve(items.size());
    for (const auto& item : items) out.push_back(to_device(item));
    return out;
  }
  template <typename K, typename V>
  std::map<K, V> to_device(const std::map<K, V>& items) const {
    std::map<K, V> out;
    for (const auto& [key, value] : items) out.emplace(key, to_device(value));
    return out;
  }
  template <typename... T>
  std::tuple<T...> to_device(const std::tuple<T...>& items) const {
    return std::apply([this](const auto&... x) { return std::tuple<T...>(to_device(x)...); },
                      items);
  }
  template <typename A, typename B>
  std::pair<A, B> to_device(const std::pair<A, B>& item) const {
    return {to_device(item.first), to_device(item.second)};
  }
  /// Every tensor of a Value tree (Python's move_data_to_device on a collection).
  Value to_device(const Value& tree) const;
  /// A batch's data, target and fields.
  data::Batch to_device(const data::Batch& batch) const;
  template <typename T>
  requires std::is_arithmetic_v<T> || std::is_same_v<T, std::string> T to_device(const T& value)
  const { return value; }

  // ---------------------------------------------------------------- output
  /// fmt-style print on local rank 0 only.
  template <typename... Args>
  void print(fmt::format_string<Args...> format, Args&&... args) const {
    if (local_rank() == 0) print_line(fmt::format(format, std::forward<Args>(args)...));
  }
  /// Sends one scalar to every logger (global rank 0 only).
  void log(const std::string& name, double value, std::optional<int64_t> step = std::nullopt);
  /// One-element tensors are accepted; anything larger is rejected as in Python.
  void log(const std::string& name, const at::Tensor& value,
           std::optional<int64_t> step = std::nullopt);
  void log_dict(const std::map<std::string, double>& metrics,
                std::optional<int64_t> step = std::nullopt);
  void log_dict(const std::map<std::string, at::Tensor>& metrics,
                std::optional<int64_t> step = std::nullopt);

  // ---------------------------------------------------------------- collectives
  void barrier(const std::string& name = "");
  at::Tensor broadcast(const at::Tensor& tensor, int src = 0);
  at::Tensor all_gather(const at::Tensor& tensor, bool sync_grads = false);
  at::Tensor all_reduce(const at::Tensor& tensor, const std::string& reduce_op = "mean");
  /// Python's conversion for plain numbers: bool -> uint8, integers -> int32, floats -> float32.
  template <typename T>
  requires std::is_arithmetic_v<T> at::Tensor all_reduce(T value,
                                                         const std::string& reduce_op = "mean") {
    return all_reduce(scalar_to_tensor(static_cast<double>(value), std::is_same_v<T, bool>,
                                       std::is_integral_v<T>),
                      reduce_op);
  }
  template <typename T>
  requires std::is_arithmetic_v<T> at::Tensor all_gather(T value) {
    return all_gather(scalar_to_tensor(static_cast<double>(value), std::is_same_v<T, bool>,
                                       std::is_integral_v<T>));
  }
  // Collectives on more than tensors (Python broadcasts any picklable object and applies
  // all_gather / all_reduce to every tensor of a collection). Every rank must call them with the
  // same structure (the same number of items, the same keys, in the same order).
  /// `value` from rank `src` on every rank ("rank 0 picks the run directory").
  std::string broadcast(const std::string& value, int src = 0);
  std::string broadcast(const char* value, int src = 0) {
    return broadcast(std::string(value), src);
  }
  /// A Value tree from `src` (serialised in torch.save's format); tensors in it arrive on the CPU
  /// on the receiving ranks (use broadcast(tensor) to keep them on the device).
  Value broadcast(const Value& value, int src = 0);
  /// A number from `src`, exactly (integers as 64-bit integers, floating point as double).
  template <typename T>
  requires std::is_arithmetic_v<T> T broadcast(T value, int src = 0) {
    if constexpr (std::is_floating_point_v<T>) {
      return static_cast<T>(broadcast_number(static_cast<double>(value), src));
    } else {
      return static_cast<T>(broadcast_number(static_cast<int64_t>(value), src));
    }
  }
  /// all_gather / all_reduce of every tensor of a vector, a string-keyed map or a Value tree
  /// (other leaves of a Value are returned unchanged, as Python's apply_to_collection does).
  std::vector<at::Tensor> all_gather(const std::vector<at::Tensor>& tensors,
                                     bool sync_grads = false);
  std::map<std::string, at::Tensor> all_gather(const std::map<std::string, at::Tensor>& tensors,
                                               bool sync_grads = false);
  Value all_gather(const Value& tree, bool sync_grads = false);
  std::vector<at::Tensor> all_reduce(const std::vector<at::Tensor>& tensors,
                                     const std::string& reduce_op = "mean");
  std::map<std::string, at::Tensor> all_reduce(const std::map<std::string, at::Tensor>& tensors,
                                               const std::string& reduce_op = "mean");
  Value all_reduce(const Value& tree, const std::string& reduce_op = "mean");
  /// Rank 0 (global, or local per node) runs the guarded block first; the others wait, without
  /// the collective timeout (as Python: rank 0 may download or preprocess for hours).
  Guard rank_zero_first(bool local = false);

  // ---------------------------------------------------------------- checkpoints
  // Fabric hands these to the strategy (Strategy::save_checkpoint / load_checkpoint), which
  // writes and reads files through its CheckpointIO, as in Python.
  /// Per-key filters for save(): for a key whose value saves as a dict, only the entries with
  /// fn(entry_key, entry_value) == true are written (Python's `filter`).
  using SaveFilter = strategies::SaveFilter;
  /// Saves `state` to `path`. With the built-in strategies every rank converts its objects,
  /// global rank 0 writes (atomically), then every rank meets at a barrier. Call it on every rank.
  void save(const std::string& path, const State& state, const SaveFilter& filter = {});
  /// Loads `path` into the objects of `state` (every rank reads the file). Plain values in
  /// `state` are replaced by the checkpoint's; returns the checkpoint's other entries. With
  /// `strict`, a key of `state` missing from the file throws, and modules check their keys.
  State load(const std::string& path, State& state, bool strict = true);
  State load(const std::string& path, State&& state, bool strict = true);
  /// The whole checkpoint as plain values.
  State load(const std::string& path);
  /// Loads a bare state dict (torch.save(model.state_dict()) or an optimizer's) into `obj`
  /// (a module or optimizer, in any form State accepts). `strict` applies to modules.
  void load_raw(const std::string& path, const State::Item& obj, bool strict = true);

  // ---------------------------------------------------------------- callbacks, seeding
  /// Calls `on_hook(name, args)` on every callback.
  template <typename... Args>
  void call(std::string_view hook_name, Args&&... args) {
    call_impl(hook_name, HookArgs(std::vector<std::any>{std::any(std::forward<Args>(args))...}));
  }
  /// Seeds every RNG cppfabric and LibTorch use; reads PL_GLOBAL_SEED when `seed` is unset.
  /// Returns the seed. `workers` defaults to true, as in Fabric.
  static uint64_t seed_everything(std::optional<int64_t> seed = std::nullopt,
                                  std::optional<bool> workers = std::nullopt, bool verbose = true);

  // ---------------------------------------------------------------- properties
  c10::Device device() const;
  int global_rank() const;
  int local_rank() const;
  int node_rank() const;
  int world_size() const;
  bool is_global_zero() const;
  const std::shared_ptr<accelerators::Accelerator>& accelerator() const;
  const std::shared_ptr<strategies::Strategy>& strategy() const;
  /// The first logger; std::out_of_range when there is none.
  const std::shared_ptr<loggers::Logger>& logger() const;
  const std::vector<std::shared_ptr<loggers::Logger>>& loggers() const;
  const std::vector<std::shared_ptr<Callback>>& callbacks() const;

 private:
  template <typename O>
  static std::shared_ptr<torch::optim::Optimizer> optimizer_ptr(const std::shared_ptr<O>& opt) {
    static_assert(std::is_base_of_v<torch::optim::Optimizer, O>,
                  "setup() takes optimizers as std::shared_ptr<torch::optim::Optimizer>");
    return opt;
  }
  [[noreturn]] static void throw_already_setup(const char* what, const char* method);
  [[noreturn]] static void throw_no_optimizers();
  static const data::DataLoader& as_loader(const data::DataLoader& loader) { return loader; }
  template <typename T>
  static const data::DataLoader& as_loader(const T&) {
    throw std::logic_error("unreachable");
  }
  [[noreturn]] static void throw_dataloader_already_setup();
  FabricDataLoader setup_dataloader(const data::DataLoader& loader,
                                    const SetupDataloadersOptions& options);

  std::shared_ptr<torch::nn::Module> setup_module_impl(
      const std::shared_ptr<torch::nn::Module>& module,
      const std::vector<std::shared_ptr<torch::optim::Optimizer>>& optimizers, bool move_to_device,
      const char* method);
  void validate_setup_optimizers(const std::vector<std::shared_ptr<torch::optim::Optimizer>>& opts);
  FabricOptimizer make_optimizer(const std::shared_ptr<torch::optim::Optimizer>& opt);
  c10::Device module_device(const std::shared_ptr<torch::nn::Module>& module,
                            bool move_to_device) const;
  void notify_after_setup(torch::nn::Module& module);
  void move_module(torch::nn::Module& module) const;
  void print_line(const std::string& line) const;
  void call_impl(std::string_view hook_name, const HookArgs& args);
  at::Tensor scalar_to_tensor(double value, bool is_bool, bool is_integral) const;
  double broadcast_number(double value, int src);
  int64_t broadcast_number(int64_t value, int src);
  void validate_src(int src) const;
  void validate_launched(const char* what) const;

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cppfabric
