// Stateful: anything fabric.save() / fabric.load() can checkpoint -- an object that returns its
// state as a Value tree and restores itself from one. LR schedulers, precision plugins and
// GradScalers implement it; so can your own classes (a data loader's position, an EMA, ...).
//
//   struct Counter : cppfabric::Stateful {
//     int64_t count = 0;
//     cppfabric::Value state_dict() const override {
//       return cppfabric::Value::dict({{"count", count}});
//     }
//     void load_state_dict(const cppfabric::Value& state) override {
//       count = state.at("count").to_int();
//     }
//   };
//   fabric.save(path, {{"model", net}, {"counter", counter}});   // referenced, not copied
#pragma once

#include <string>

#include "cppfabric/value.hpp"

namespace cppfabric {

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

}  // namespace cppfabric
