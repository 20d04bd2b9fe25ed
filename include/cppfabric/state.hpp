// State: what fabric.save() writes and fabric.load() restores.
//
//   fabric.save("checkpoints/epoch_5.ckpt",
//               {{"model", net}, {"optimizer", opt}, {"scheduler", scheduler}, {"epoch", epoch}});
//   cppfabric::State remainder = fabric.load("checkpoints/epoch_5.ckpt",
//               {{"model", net}, {"optimizer", opt}, {"scheduler", scheduler}});
//   int64_t epoch = remainder.get<int64_t>("epoch");
//
// A State maps string keys, in insertion order, to either a stateful object or a plain value:
//   - stateful: a FabricModule, a module holder or std::shared_ptr<Module>, a FabricOptimizer or
//     std::shared_ptr<Optimizer>, an LR scheduler, a precision plugin, a GradScaler, or anything
//     implementing cppfabric::Stateful (stateful.hpp: state_dict / load_state_dict). Objects
//     passed as lvalue references (schedulers, scalers, your own Stateful) are referenced, not
//     copied: they must outlive the State. Movable rvalues of Stateful subclasses are moved in
//     and owned (schedulers and scalers cannot move: they are referenced).
//   - plain values (cppfabric::Value, value.hpp): None, bool, integers, floats, strings, tensors,
//     lists, tuples, dicts, and nested States.
// get<T>(key) returns a plain value as T (int64_t, int, double, bool, std::string, at::Tensor,
// Value, State) and throws std::invalid_argument naming the key and the type found otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/stateful.hpp"
#include "cppfabric/value.hpp"
#include "cppfabric/wrappers.hpp"

namespace cppfabric {

namespace detail {
// Adapters that give LibTorch's modules and optimizers Python's state-dict layout (implemented in
// src/checkpoint/adapters.cpp).
std::shared_ptr<Stateful> module_stateful(std::shared_ptr<torch::nn::Module> module);
std::shared_ptr<Stateful> optimizer_stateful(std::shared_ptr<torch::optim::Optimizer> optimizer);
/// A shared_ptr that does not own (for objects passed by lvalue reference).
template <typename T>
std::shared_ptr<T> borrow(T& object) {
  return std::shared_ptr<T>(std::shared_ptr<T>{}, &object);
}
}  // namespace detail

class State;

/// RNG states for a bit-identical resume: the CPU generator and, when CUDA is available, every
/// CUDA device's default generator. state_dict(): {"torch": uint8 tensor, "torch.cuda": [uint8
/// tensor per device]}, the keys Lightning uses for these generators.
///   fabric.save(path, {{"model", net}, {"rng", cppfabric::RngStates{}}});
class RngStates : public Stateful {
 public:
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;
  std::string kind() const override { return "RNG states"; }
};

class State {
 public:
  /// What one key holds: a stateful object, a plain value, or a nested State.
  class Item {
   public:
    Item() = default;
    // Plain values.
    Item(Value value) : value_(std::move(value)) {}
    template <typename T>
    requires std::is_arithmetic_v<T> Item(T value) : value_(Value(value)) {}
    Item(const char* value) : value_(Value(value)) {}
    Item(std::string value) : value_(Value(std::move(value))) {}
    Item(at::Tensor value) : value_(Value(std::move(value))) {}
    Item(State state);
    // Modules.
    Item(const FabricModuleBase& module)
        : stateful_(detail::module_stateful(module.base_module_ptr())) {}
    template <typename C>
    Item(const torch::nn::ModuleHolder<C>& holder)
        : stateful_(detail::module_stateful(holder.ptr())) {}
    // Optimizers.
    Item(const FabricOptimizer& optimizer)
        : stateful_(detail::optimizer_stateful(optimizer.optimizer_ptr())) {}
    // shared_ptr to a module, an optimizer or a Stateful (scheduler, precision plugin, ...).
    template <typename T>
    Item(const std::shared_ptr<T>& object) : stateful_(from_shared(object)) {}
    // Stateful objects (schedulers, precision plugins, scalers, your own): lvalues are
    // referenced, not owned; movable rvalues are moved in.
    template <typename T>
    requires std::is_base_of_v<Stateful, std::remove_cvref_t<T>> Item(T&& object)
        : stateful_(from_object(std::forward<T>(object))) {}

    bool is_stateful() const { return stateful_ != nullptr; }
    bool is_state() const { return state_ != nullptr; }
    bool is_value() const { return !is_stateful() && !is_state(); }
    const std::shared_ptr<Stateful>& stateful() const { return stateful_; }
    const std::shared_ptr<State>& state() const { return state_; }
    const Value& value() const { return value_; }
    Value& value() { return value_; }
    /// The Value this item saves as (a stateful object's state_dict()).
    Value to_value() const;

   private:
    template <typename T>
    static std::shared_ptr<Stateful> from_shared(const std::shared_ptr<T>& object) {
      if constexpr (std::is_base_of_v<Stateful, T>) {
        if (!object) throw std::invalid_argument("State: got a null stateful object");
        return object;
      } else if constexpr (std::is_base_of_v<torch::nn::Module, T>) {
        return detail::module_stateful(object);
      } else if constexpr (std::is_base_of_v<torch::optim::Optimizer, T>) {
        return detail::optimizer_stateful(object);
      } else {
        static_assert(sizeof(T) == 0,
                      "State holds modules, optimizers and cppfabric::Stateful objects "
                      "(schedulers, precision plugins, GradScalers, your own)");
      }
    }
    template <typename T>
    static std::shared_ptr<Stateful> from_object(T&& object) {
      using D = std::remove_cvref_t<T>;
      if constexpr (!std::is_lvalue_reference_v<T> && std::is_move_constructible_v<D>) {
        return std::make_shared<D>(std::forward<T>(object));
      } else {
        // Not copyable (schedulers, scalers): referenced, like an lvalue.
        return detail::borrow(const_cast<D&>(object));
      }
    }

    std::shared_ptr<Stateful> stateful_;
    std::shared_ptr<State> state_;
    Value value_;
  };

  using Entry = std::pair<std::string, Item>;

  State() = default;
  State(std::initializer_list<Entry> entries);

  /// Inserts or replaces `key`, keeping the first insertion's position.
  void set(const std::string& key, Item item);
  bool contains(const std::string& key) const;
  bool erase(const std::string& key);
  /// The item under `key`; std::out_of_range naming the key and the keys present otherwise.
  const Item& at(const std::string& key) const;
  Item& at(const std::string& key);
  std::vector<std::string> keys() const;
  std::size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  auto begin() const { return entries_.begin(); }
  auto end() const { return entries_.end(); }
  auto begin() { return entries_.begin(); }
  auto end() { return entries_.end(); }

  /// A plain value as T: int64_t, int, double, float, bool, std::string, at::Tensor, Value or
  /// State (a dict becomes a State of plain values).
  template <typename T>
  T get(const std::string& key) const;

  /// Every entry as a Value dict (stateful objects become their state_dict()).
  Value to_value() const;
  /// A State of plain values from a dict Value with string keys.
  static State from_value(const Value& dict);

 private:
  const Value& plain(const std::string& key, const char* wanted) const;
  std::vector<Entry> entries_;
};

inline State::Item::Item(State state) : state_(std::make_shared<State>(std::move(state))) {}

template <typename T>
T State::get(const std::string& key) const {
  if constexpr (std::is_same_v<T, bool>) {
    return plain(key, "bool").to_bool();
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(plain(key, "int").to_int());
  } else if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(plain(key, "float").to_double());
  } else if constexpr (std::is_same_v<T, std::string>) {
    return plain(key, "str").to_string();
  } else if constexpr (std::is_same_v<T, at::Tensor>) {
    return plain(key, "Tensor").to_tensor();
  } else if constexpr (std::is_same_v<T, Value>) {
    return plain(key, "");
  } else if constexpr (std::is_same_v<T, State>) {
    const Item& item = at(key);
    if (item.is_state()) return *item.state();
    return from_value(plain(key, "dict"));
  } else {
    static_assert(sizeof(T) == 0,
                  "State::get<T>: T must be a number, bool, std::string, "
                  "at::Tensor, cppfabric::Value or cppfabric::State");
  }
}

}  // namespace cppfabric
