// State and RngStates (include/cppfabric/state.hpp). Value lives in src/value.cpp; the module and
// optimizer adapters in src/checkpoint/adapters.cpp.
#include "cppfabric/state.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <mutex>
#include <stdexcept>
#include <string_view>
#include <unordered_map>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric {

// ------------------------------------------------------------------------------------ State

Value State::Item::to_value() const {
  if (stateful_) return stateful_->state_dict();
  if (state_) return state_->to_value();
  return value_;
}

State::State(std::initializer_list<Entry> entries) {
  for (const auto& [key, item] : entries) set(key, item);
}

void State::set(const std::string& key, Item item) {
  for (auto& entry : entries_) {
    if (entry.first == key) {
      entry.second = std::move(item);
      return;
    }
  }
  entries_.emplace_back(key, std::move(item));
}

bool State::contains(const std::string& key) const {
  for (const auto& entry : entries_)
    if (entry.first == key) return true;
  return false;
}

bool State::erase(const std::string& key) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->first == key) {
      entries_.erase(it);
      return true;
    }
  }
  return false;
}

const State::Item& State::at(const std::string& key) const {
  for (const auto& entry : entries_)
    if (entry.first == key) return entry.second;
  throw std::out_of_range(
      fmt::format("The state has no key '{}'. Keys present: [{}]", key, fmt::join(keys(), ", ")));
}

State::Item& State::at(const std::string& key) {
  return const_cast<Item&>(static_cast<const State*>(this)->at(key));
}

std::vector<std::string> State::keys() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& entry : entries_) out.push_back(entry.first);
  return out;
}

namespace {
/// "an int", "a float": the type name with its English article.
std::string with_article(std::string_view name) {
  const bool vowel =
      !name.empty() && std::string_view("aeiouAEIOU").find(name[0]) != std::string_view::npos;
  return fmt::format("{} {}", vowel ? "an" : "a", name);
}
}  // namespace

const Value& State::plain(const std::string& key, const char* wanted) const {
  const Item& item = at(key);
  if (item.is_stateful()) {
    throw std::invalid_argument(fmt::format(
        "State key '{}' holds {} (a stateful object), not a plain {}; read it through the "
        "object itself",
        key, with_article(item.stateful()->kind()), wanted));
  }
  if (item.is_state()) {
    if (std::string_view(wanted) == "dict" || std::string_view(wanted).empty()) {
      static thread_local Value holder;
      holder = item.state()->to_value();
      return holder;
    }
    throw std::invalid_argument(
        fmt::format("State key '{}' holds a nested State, not {}", key, with_article(wanted)));
  }
  const Value& value = item.value();
  const std::string_view w(wanted);
  const auto k = value.kind();
  const bool ok = w.empty() || (w == "bool" && k == Value::Kind::Bool) ||
                  (w == "int" && (k == Value::Kind::Int || k == Value::Kind::Bool)) ||
                  (w == "float" && (k == Value::Kind::Double || k == Value::Kind::Int)) ||
                  (w == "str" && k == Value::Kind::String) ||
                  (w == "Tensor" && k == Value::Kind::Tensor) ||
                  (w == "dict" && k == Value::Kind::Dict);
  if (!ok) {
    throw std::invalid_argument(fmt::format("State key '{}' holds {} ({}), not {}", key,
                                            with_article(value.type_name()), value.repr(),
                                            with_article(wanted)));
  }
  return value;
}

Value State::to_value() const {
  Value out = Value::dict();
  for (const auto& [key, item] : entries_) out.items().emplace_back(Value(key), item.to_value());
  return out;
}

State State::from_value(const Value& dict) {
  State state;
  state.entries_.reserve(dict.items().size());
  // Positions by key: linear in the dict's size (a loaded checkpoint may hold 100k keys).
  std::unordered_map<std::string, std::size_t> position;
  for (const auto& [key, value] : dict.items()) {
    if (key.kind() != Value::Kind::String) {
      throw std::invalid_argument(fmt::format(
          "A State needs string keys; this dict has the key {} ({})", key.repr(), key.type_name()));
    }
    const auto [it, inserted] = position.try_emplace(key.to_string(), state.entries_.size());
    if (inserted) {
      state.entries_.emplace_back(key.to_string(), Item(value));
    } else {
      state.entries_[it->second].second = Item(value);
    }
  }
  return state;
}

// ------------------------------------------------------------------------------- RNG states

Value RngStates::state_dict() const {
  Value out = Value::dict();
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.set("torch", gen.get_state());
  }
  Value cuda = Value::list();
  if (at::globalContext().hasCUDA()) {
    const auto n = at::detail::getCUDAHooks().deviceCount();
    for (c10::DeviceIndex i = 0; i < n; ++i) {
      auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, i));
      std::lock_guard<std::mutex> lock(gen.mutex());
      cuda.elements().emplace_back(gen.get_state());
    }
  }
  out.set("torch.cuda", std::move(cuda));
  return out;
}

void RngStates::load_state_dict(const Value& state) {
  if (!state.is_dict()) {
    throw std::runtime_error(fmt::format("RNG states must be a dict, got a {}", state.type_name()));
  }
  if (const Value* cpu = state.find(Value("torch"))) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(cpu->to_tensor());
  }
  if (const Value* cuda = state.find(Value("torch.cuda"))) {
    const auto& states = cuda->elements();
    const c10::DeviceIndex n =
        at::globalContext().hasCUDA() ? at::detail::getCUDAHooks().deviceCount() : 0;
    for (std::size_t i = 0; i < states.size() && static_cast<c10::DeviceIndex>(i) < n; ++i) {
      auto gen = at::globalContext().defaultGenerator(
          c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(states[i].to_tensor());
    }
  }
}

}  // namespace cppfabric
