// Fabric::save / load / load_raw (declared in fabric.hpp). The semantics follow Lightning
// Fabric's Strategy.save_checkpoint / load_checkpoint: every rank converts, global rank 0
// writes, everyone meets at a barrier; every rank reads its own copy of the file.
#include <set>
#include <stdexcept>

#include "cppfabric/checkpoint/checkpoint_io.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/fabric.hpp"
#include "cppfabric/strategies/strategy.hpp"

namespace cppfabric {
namespace {

checkpoint::CheckpointIO& checkpoint_io(const strategies::Strategy& strategy) {
  if (const auto& io = strategy.checkpoint_io()) return *io;
  static checkpoint::TorchCheckpointIO default_io;
  return default_io;
}

std::string key_set(const std::vector<std::string>& keys) {
  std::vector<std::string> quoted;
  for (const auto& k : keys) quoted.push_back(fmt::format("'{}'", k));
  return fmt::format("{{{}}}", fmt::join(quoted, ", "));
}

// Loads the checkpoint dict `ckpt` into `state`, popping what it uses from `ckpt`.
void load_into(State& state, Value& ckpt, bool strict, const std::string& where) {
  if (strict) {
    for (const auto& key : state.keys()) {
      if (ckpt.find(Value(key)) == nullptr) {
        throw std::runtime_error(fmt::format(
            "The requested state contains a key '{}'{} that does not exist in the loaded "
            "checkpoint (its keys: {}). To disable strict loading, pass strict = false.",
            key, where, key_set([&] {
              std::vector<std::string> keys;
              for (const auto& [k, v] : ckpt.items())
                keys.push_back(k.kind() == Value::Kind::String ? k.to_string() : k.repr());
              return keys;
            }())));
      }
    }
  }
  for (auto& [key, item] : state) {
    Value* found = ckpt.find(Value(key));
    if (found == nullptr) continue;
    Value value = std::move(*found);
    ckpt.erase(Value(key));
    if (item.is_stateful()) {
      try {
        item.stateful()->load_state_dict(value, strict);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(
            fmt::format("Loading the checkpoint key '{}'{} into the {} failed: {}", key, where,
                        item.stateful()->kind(), e.what()));
      }
    } else if (item.is_state() && value.is_dict()) {
      load_into(*item.state(), value, strict, fmt::format("{} (inside '{}')", where, key));
    } else {
      item = State::Item(std::move(value));
    }
  }
}

}  // namespace

void Fabric::save(const std::string& path, const State& state, const SaveFilter& filter) {
  for (const auto& [key, fn] : filter) {
    if (!state.contains(key)) {
      std::vector<std::string> extra;
      for (const auto& [k, f] : filter)
        if (!state.contains(k)) extra.push_back(k);
      throw std::invalid_argument(
          fmt::format("The filter keys {} are not present in the state keys {}.", key_set(extra),
                      key_set(state.keys())));
    }
    if (!fn) {
      throw TypeError(
          fmt::format("Expected `fabric.save(filter=...)` for key '{}' to be a callable, given an "
                      "empty function",
                      key));
    }
  }
  // Every rank converts its objects (collective state dicts need this on sharded strategies).
  Value checkpoint = state.to_value();
  for (auto& [key, value] : checkpoint.items()) {
    auto it = filter.find(key.to_string());
    if (it == filter.end() || !value.is_dict()) continue;
    Value::Items kept;
    for (auto& [k, v] : value.items())
      if (it->second(k, v)) kept.emplace_back(k, v);
    value = Value::dict(std::move(kept), value.is_ordered_dict());
  }
  if (strategy()->is_global_zero()) checkpoint_io(*strategy()).save_checkpoint(checkpoint, path);
  barrier();
}

State Fabric::load(const std::string& path, State& state, bool strict) {
  Value checkpoint = checkpoint_io(*strategy()).load_checkpoint(path);
  if (!checkpoint.is_dict()) {
    throw std::runtime_error(fmt::format(
        "The checkpoint {} holds a {}, not a dict of states; use fabric.load_raw for a bare state "
        "dict",
        path, checkpoint.type_name()));
  }
  if (!state.empty()) load_into(state, checkpoint, strict, "");
  barrier();
  return State::from_value(checkpoint);
}

State Fabric::load(const std::string& path, State&& state, bool strict) {
  State local = std::move(state);
  return load(path, local, strict);
}

State Fabric::load(const std::string& path) {
  State empty;
  return load(path, empty, true);
}

void Fabric::load_raw(const std::string& path, const State::Item& obj, bool strict) {
  if (!obj.is_stateful()) {
    throw TypeError(
        "fabric.load_raw() loads into a module, an optimizer or another stateful object; got a "
        "plain value");
  }
  Value checkpoint = checkpoint_io(*strategy()).load_checkpoint(path);
  obj.stateful()->load_state_dict(checkpoint, strict);
}

}  // namespace cppfabric
