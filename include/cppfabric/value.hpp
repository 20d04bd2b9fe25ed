// Value: a plain value as Python's pickle sees it -- the tree every state_dict() returns, that
// checkpoints hold and that cppfabric::checkpoint reads and writes in torch.save's format.
//
//   cppfabric::Value state = cppfabric::Value::dict();
//   state.set("last_epoch", 3);                                  // an int, as in Python
//   state.set("base_lrs", cppfabric::Value::list({0.1, 0.05}));  // a list of floats
//   int64_t epoch = state.at("last_epoch").to_int();
//   for (const auto& lr : state.at("base_lrs").elements()) use(lr.to_double());
//
// Typed access (to_int, to_double, elements, items, ...) throws std::invalid_argument naming the
// type it wanted and the type it found.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace cppfabric {

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
  // Defined out of line (value.cpp) on purpose: inlined, std::variant's move of a temporary
  // Value raises GCC 12 -Wmaybe-uninitialized false positives in every file that builds one.
  Value(const Value& other);
  Value(Value&& other) noexcept;
  Value& operator=(const Value& other);
  Value& operator=(Value&& other) noexcept;
  ~Value();

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
  /// This is how dict keys are matched.
  bool scalar_equals(const Value& other) const;
  /// Deep equality: the same kind (an int never equals a float, a list never a tuple, a dict
  /// never an OrderedDict), equal scalars, the same items in the same order, and tensors of the
  /// same dtype, shape and device with equal elements.
  friend bool operator==(const Value& a, const Value& b);
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

}  // namespace cppfabric
