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
//     implementing cppfabric::Stateful (state_dict / load_state_dict). Objects passed as lvalue
//     references (schedulers, scalers, your own Stateful) are referenced, not copied: they must
//     outlive the State. Rvalues of Stateful subclasses are moved in and owned.
//   - plain values (cppfabric::Value): None, bool, integers, floats, strings, tensors, lists,
//     tuples, dicts, and nested States.
// get<T>(key) returns a plain value as T (int64_t, int, double, bool, std::string, at::Tensor,
// Value, State) and throws std::invalid_argument naming the key and the type found otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "cppfabric/detail/fwd.hpp"
#include "cppfabric/wrappers.hpp"

namespace cppfabric {

namespace optim {
class LRScheduler;
}
namespace precision {
class Precision;
class GradScaler;
}  // namespace precision

/// A plain value as Python's pickle sees it: None, bool, int, float, str, Tensor, list, tuple,
/// dict (optionally an OrderedDict). Dict keys are Values too (Python's optimizer state uses int
/// keys). Copies share tensors, as Python objects would.
class Value {
 public:
  enum class Kind { None, Bool, Int, Double, String, Tensor, List, Tuple, Dict };
  using List = std::vector<Value>;
  using Items = std::vector<std::pair<Value, Value>>;

  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool value) : data_(value) {}
  template <typename T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool>) Value(T value)
      : data_(static_cast<int64_t>(value)) {}
  template <typename T>
  requires std::is_floating_point_v<T> Value(T value) : data_(static_cast<double>(value)) {}
  Value(std::string value) : data_(std::move(value)) {}
  Value(std::string_view value) : data_(std::string(value)) {}
  Value(const char* value) : data_(std::string(value)) {}
  Value(at::Tensor value) : data_(std::move(value)) {}

  static Value list(List items = {});
  static Value tuple(List items = {});
  /// A dict; `ordered` marks a collections.OrderedDict (what module state dicts are in Python).
  static Value dict(Items items = {}, bool ordered = false);

  Kind kind() const;
  /// Python's name for the kind: "NoneType", "bool", "int", "float", "str", "Tensor", "list",
  /// "tuple", "dict".
  const char* type_name() const;
  bool is_none() const { return kind() == Kind::None; }
  bool is_dict() const { return kind() == Kind::Dict; }
  bool is_sequence() const { return kind() == Kind::List || kind() == Kind::Tuple; }
  bool is_ordered_dict() const;

  // Typed access; each throws std::invalid_argument naming the expected and the actual type.
  bool to_bool() const;
  int64_t to_int() const;    // also accepts a bool
  double to_double() const;  // also accepts an int
  const std::string& to_string() const;
  const at::Tensor& to_tensor() const;
  const List& elements() const;  // list or tuple
  List& elements();
  const Items& items() const;  // dict
  Items& items();

  /// Dict lookup (nullptr when absent or not a dict).
  const Value* find(const Value& key) const;
  Value* find(const Value& key);
  /// Dict lookup that throws std::out_of_range naming the key.
  const Value& at(const Value& key) const;
  /// Inserts or replaces a dict entry, keeping the insertion order.
  void set(Value key, Value value);
  bool erase(const Value& key);

  /// Equality of scalars (None, bool, int, float, str); containers and tensors compare false.
  bool scalar_equals(const Value& other) const;
  /// A short Python-like rendering for messages: 'text', 3, 0.5, True, Tensor[2, 3] ...
  std::string repr() const;

 private:
  struct Seq {
    List items;
    bool tuple = false;
  };
  struct Map {
    Items items;
    bool ordered = false;
  };
  std::variant<std::monostate, bool, int64_t, double, std::string, at::Tensor, Seq, Map> data_;
};

/// The interface fabric.save / fabric.load use for anything with a state: return a Value tree
/// (usually a dict) and restore from one.
class Stateful {
 public:
  virtual ~Stateful() = default;
  virtual Value state_dict() const = 0;
  virtual void load_state_dict(const Value& state) = 0;
  /// Called by fabric.load with its `strict` flag; defaults to load_state_dict(state).
  virtual void load_state_dict(const Value& state, bool /*strict*/) { load_state_dict(state); }
  /// A word for messages ("module", "optimizer", "scheduler", ...).
  virtual std::string kind() const { return "stateful object"; }
};

namespace detail {
// Adapters for the objects cppfabric knows (implemented in src/state.cpp).
std::shared_ptr<Stateful> module_stateful(std::shared_ptr<torch::nn::Module> module);
std::shared_ptr<Stateful> optimizer_stateful(std::shared_ptr<torch::optim::Optimizer> optimizer);
std::shared_ptr<Stateful> scheduler_stateful(std::shared_ptr<optim::LRScheduler> scheduler);
std::shared_ptr<Stateful> precision_stateful(std::shared_ptr<precision::Precision> precision);
std::shared_ptr<Stateful> grad_scaler_stateful(std::shared_ptr<precision::GradScaler> scaler);
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
    // shared_ptr to a module, optimizer, scheduler, precision plugin, scaler or Stateful.
    template <typename T>
    Item(const std::shared_ptr<T>& object) : stateful_(from_shared(object)) {}
    // References to schedulers, precision plugins, scalers and Stateful objects (not owned).
    template <typename T>
    requires(!std::is_arithmetic_v<std::remove_cvref_t<T>> &&
             (std::is_base_of_v<optim::LRScheduler, std::remove_cvref_t<T>> ||
              std::is_base_of_v<precision::Precision, std::remove_cvref_t<T>> ||
              std::is_same_v<precision::GradScaler, std::remove_cvref_t<T>> ||
              std::is_base_of_v<Stateful, std::remove_cvref_t<T>>)) Item(T&& object)
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
        return object;
      } else if constexpr (std::is_base_of_v<torch::nn::Module, T>) {
        return detail::module_stateful(object);
      } else if constexpr (std::is_base_of_v<torch::optim::Optimizer, T>) {
        return detail::optimizer_stateful(object);
      } else if constexpr (std::is_base_of_v<optim::LRScheduler, T>) {
        return detail::scheduler_stateful(object);
      } else if constexpr (std::is_base_of_v<precision::Precision, T>) {
        return detail::precision_stateful(object);
      } else if constexpr (std::is_same_v<precision::GradScaler, T>) {
        return detail::grad_scaler_stateful(object);
      } else {
        static_assert(sizeof(T) == 0,
                      "State holds modules, optimizers, schedulers, precision plugins, "
                      "GradScalers and cppfabric::Stateful objects");
      }
    }
    template <typename T>
    static std::shared_ptr<Stateful> from_object(T&& object) {
      using D = std::remove_cvref_t<T>;
      if constexpr (std::is_base_of_v<Stateful, D> && !std::is_lvalue_reference_v<T>) {
        return std::make_shared<D>(std::forward<T>(object));
      } else {
        return from_shared(detail::borrow(const_cast<D&>(object)));
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
