// FabricOptions, and the argument types behind it: each accepts the same spellings as Python
// Fabric, in the order of Python's `Fabric(...)` keyword arguments.
//
//   cppfabric::FabricOptions options{.accelerator = "cpu", .strategy = "ddp", .devices = 2};
//   cppfabric::Fabric fabric(options);
//
//   DevicesArg d1 = "auto";       DevicesArg d2 = 2;      DevicesArg d3 = -1;
//   DevicesArg d4 = "0,2";        DevicesArg d5 = std::vector<int>{0, 2};
//   PrecisionArg p1 = "bf16-mixed";   PrecisionArg p2 = 16;   // legacy int, warns
//   NameOr<strategies::Strategy> s = "ddp";    // or a std::shared_ptr<Strategy>
#pragma once

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace cppfabric {

/// `devices`: "auto", an int (-1 = all), a string ("2", "0,2", "-1") or a list of indices.
class DevicesArg {
 public:
  using Value = std::variant<std::string, int, std::vector<int>>;
  DevicesArg() : value_(std::string("auto")) {}
  DevicesArg(int n) : value_(n) {}                       // NOLINT(google-explicit-constructor)
  DevicesArg(const char* s) : value_(std::string(s)) {}  // NOLINT
  DevicesArg(std::string s) : value_(std::move(s)) {}    // NOLINT
  DevicesArg(std::vector<int> ids) : value_(std::move(ids)) {}                   // NOLINT
  DevicesArg(std::initializer_list<int> ids) : value_(std::vector<int>(ids)) {}  // NOLINT

  const Value& value() const { return value_; }
  bool is_auto() const;
  /// Python's repr of the value: 'auto', 2, [0, 2].
  std::string repr() const;
  /// Python's str of the value: auto, 2, [0, 2].
  std::string str() const;

 private:
  Value value_;
};

namespace precision {
class Precision;
}

/// `precision`: a string ("32-true", "bf16-mixed", ...), a legacy int (16, 32, 64) or a
/// precision plugin object. Unset means "32-true".
class PrecisionArg {
 public:
  using Value =
      std::variant<std::monostate, std::string, int, std::shared_ptr<precision::Precision>>;
  PrecisionArg() = default;
  PrecisionArg(int p) : value_(p) {}                       // NOLINT
  PrecisionArg(const char* s) : value_(std::string(s)) {}  // NOLINT
  PrecisionArg(std::string s) : value_(std::move(s)) {}    // NOLINT
  template <typename P>
  requires std::is_base_of_v<precision::Precision, P> PrecisionArg(
      std::shared_ptr<P> plugin)  // NOLINT
      : value_(std::shared_ptr<precision::Precision>(std::move(plugin))) {}

  const Value& value() const { return value_; }
  bool is_set() const { return !std::holds_alternative<std::monostate>(value_); }
  std::string repr() const;
  std::string str() const;

 private:
  Value value_;
};

/// A registered name or an object of type T (used for `accelerator` and `strategy`).
template <typename T>
class NameOr {
 public:
  NameOr(const char* name) : name_(name) {}             // NOLINT
  NameOr(std::string name) : name_(std::move(name)) {}  // NOLINT
  template <typename U>
  requires std::is_base_of_v<T, U> NameOr(std::shared_ptr<U> object)
      : object_(std::move(object)) {}  // NOLINT

  bool is_name() const { return object_ == nullptr; }
  const std::string& name() const { return name_; }
  const std::shared_ptr<T>& object() const { return object_; }

 private:
  std::string name_;
  std::shared_ptr<T> object_;
};

namespace accelerators {
class Accelerator;
}
namespace strategies {
class Strategy;
}
namespace loggers {
class Logger;
}
class Plugin;
class Callback;

/// Python's `Fabric(...)` keyword arguments, in the same order, with the same strings and
/// defaults. LT_ACCELERATOR, LT_STRATEGY, LT_DEVICES, LT_NUM_NODES and LT_PRECISION override them
/// as in Python.
struct FabricOptions {
  NameOr<accelerators::Accelerator> accelerator = "auto";
  NameOr<strategies::Strategy> strategy = "auto";
  DevicesArg devices = "auto";
  int num_nodes = 1;
  PrecisionArg precision = {};
  std::vector<std::shared_ptr<Plugin>> plugins = {};
  std::vector<std::shared_ptr<Callback>> callbacks = {};
  std::vector<std::shared_ptr<loggers::Logger>> loggers = {};
};

/// The keyword arguments of `fabric.setup(model, optimizers...)` and `fabric.setup_module`; pass it
/// last: `fabric.setup(model, optimizer, cppfabric::SetupOptions{.move_to_device = false})`.
struct SetupOptions {
  /// false: leave the parameters where they are (e.g. a model you placed yourself).
  bool move_to_device = true;
};

}  // namespace cppfabric
