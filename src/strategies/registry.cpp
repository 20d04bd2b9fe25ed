#include "cppfabric/strategies/registry.hpp"

#include <algorithm>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/strategies/ddp.hpp"
#include "cppfabric/strategies/fsdp.hpp"
#include "cppfabric/strategies/single_device.hpp"
#include "cppfabric/strategies/zero.hpp"
#include "cppfabric/utilities/errors.hpp"

namespace cppfabric::strategies {
namespace {

using Availability = StrategyRegistry::Availability;

// Python's registry names that have no C++ strategy (yet). Each strategy that exists registers
// its own names; these have no class here to do it, so the registry lists them itself.
struct KnownName {
  std::string name;
  Availability availability;
  std::string description;
  std::string reason;
};

std::string start_method_reason(const std::string& method) {
  return fmt::format(
      "it is Python's multiprocessing start method '{}'. A C++ program starts its processes by "
      "re-executing itself, which is strategy='ddp' (fabric.launch(fn) then runs fn in every "
      "process)",
      method);
}

const std::vector<KnownName>& known_names() {
  const std::string xla =
      "TPUs are reached through torch_xla, a Python-only back end that LibTorch does not ship. "
      "Use accelerator='cuda' or 'cpu' with strategy='ddp'";
  const std::string offload =
      "DeepSpeed's CPU/NVMe offload engine is a Python and CUDA extension with no C++ interface. "
      "Use strategy='fsdp_cpu_offload' to keep parameters and optimizer state on the CPU";
  const std::string deepspeed = "DeepSpeed is a Python engine with no C++ interface. ";
  using A = Availability;
  static const std::vector<KnownName> names = {
      {"ddp_spawn", A::Unsupported, "DDP strategy with `start_method='spawn'`",
       start_method_reason("spawn")},
      {"ddp_fork", A::Unsupported, "DDP strategy with `start_method='fork'`",
       start_method_reason("fork")},
      {"ddp_notebook", A::Unsupported, "DDP strategy with `start_method='fork'`",
       start_method_reason("fork")},
      {"dp", A::Unsupported, "DataParallelStrategy",
       "DataParallel (one process driving several GPUs through Python threads) has no C++ "
       "counterpart and is slower than DDP. Use strategy='ddp', one process per device"},
      {"deepspeed_stage_1_offload", A::Unsupported,
       "DeepSpeed with ZeRO Stage 1 and optimizer CPU Offload", offload},
      {"deepspeed_stage_2_offload", A::Unsupported, "DeepSpeed ZeRO Stage 2 and CPU Offload",
       offload},
      {"deepspeed_stage_3", A::Unsupported, "DeepSpeed ZeRO Stage 3",
       deepspeed + "Use strategy='fsdp' (its FULL_SHARD is ZeRO stage 3)"},
      {"deepspeed_stage_3_offload", A::Unsupported, "DeepSpeed ZeRO Stage 3 and CPU Offload",
       offload},
      {"deepspeed_stage_3_offload_nvme", A::Unsupported, "DeepSpeed ZeRO Stage 3 and NVMe Offload",
       offload},
      {"single_tpu", A::Unsupported, "Legacy name of 'single_xla'", xla},
      {"single_xla", A::Unsupported, "SingleDeviceXLAStrategy", xla},
      {"xla", A::Unsupported, "XLAStrategy", xla},
      {"xla_fsdp", A::Unsupported, "XLAFSDPStrategy", xla},
  };
  return names;
}

void register_known_names(StrategyRegistry& registry) {
  for (const auto& known : known_names()) {
    registry.register_unavailable(known.name, known.availability, known.reason, known.description);
  }
}

std::string quoted_list(const std::vector<std::string>& names) {
  return fmt::format("{}", fmt::join(names, ", "));
}

}  // namespace

StrategyRegistry& StrategyRegistry::global() {
  // Filled on first use (not by static initialisers), so the built-ins are there whatever the
  // link order, and user registrations from their own static objects find a constructed table.
  static StrategyRegistry* registry = [] {
    auto* r = new StrategyRegistry();
    SingleDeviceStrategy::register_strategies(*r);
    DDPStrategy::register_strategies(*r);
    FSDPStrategy::register_strategies(*r);
    ZeROStrategy::register_strategies(*r);
    register_known_names(*r);
    return r;
  }();
  return *registry;
}

void StrategyRegistry::add(Entry entry, bool override) {
  if (entry.name.empty()) {
    throw std::invalid_argument("A strategy name must not be empty.");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const Entry& e) { return e.name == entry.name; });
  if (it != entries_.end()) {
    if (!override) {
      throw std::invalid_argument(fmt::format(
          "'{}' is already present in the registry. HINT: pass override = true to replace it.",
          entry.name));
    }
    *it = std::move(entry);
    return;
  }
  entries_.push_back(std::move(entry));
}

void StrategyRegistry::register_strategy(const std::string& name, Factory factory,
                                         std::string description, bool override) {
  if (!factory) {
    throw std::invalid_argument(fmt::format(
        "register_strategy('{}'): the factory is empty; pass a function that returns a new "
        "strategy",
        name));
  }
  add(Entry{name, std::move(description), Availability::Available, std::move(factory), ""},
      override);
}

void StrategyRegistry::register_unavailable(const std::string& name, Availability availability,
                                            std::string reason, std::string description,
                                            bool override) {
  if (availability == Availability::Available) {
    throw std::invalid_argument(fmt::format(
        "register_unavailable('{}'): use register_strategy for an available strategy", name));
  }
  add(Entry{name, std::move(description), availability, nullptr, std::move(reason)}, override);
}

bool StrategyRegistry::remove(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const Entry& e) { return e.name == name; });
  if (it == entries_.end()) return false;
  entries_.erase(it);
  return true;
}

bool StrategyRegistry::contains(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::any_of(entries_.begin(), entries_.end(),
                     [&](const Entry& e) { return e.name == name; });
}

StrategyRegistry::Entry StrategyRegistry::get(const std::string& name) const {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& e : entries_) {
      if (e.name == name) return e;
    }
  }
  throw std::out_of_range(
      fmt::format("'{}' not found in registry. Available names: {}", name, quoted_list(names())));
}

std::shared_ptr<Strategy> StrategyRegistry::create(const std::string& name) const {
  const Entry entry = get(name);
  switch (entry.availability) {
    case Availability::Available:
      break;
    case Availability::Upcoming:
      throw NotYetAvailableError(
          fmt::format("strategy='{}' is recognised but not yet available in this cppfabric "
                      "release: {}.",
                      name, entry.reason));
    case Availability::Unsupported:
      throw NotSupportedError(fmt::format(
          "strategy='{}' is a Python Lightning Fabric strategy that cppfabric does not support: "
          "{}.",
          name, entry.reason));
  }
  auto strategy = entry.factory();
  if (!strategy) {
    throw std::runtime_error(
        fmt::format("The factory registered for strategy='{}' returned a null strategy.", name));
  }
  return strategy;
}

std::vector<std::string> StrategyRegistry::names_where(
    const std::function<bool(const Entry&)>& keep) const {
  std::vector<std::string> out;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& e : entries_) {
      if (keep(e)) out.push_back(e.name);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> StrategyRegistry::available_strategies() const {
  return names_where([](const Entry& e) { return e.availability == Availability::Available; });
}

std::vector<std::string> StrategyRegistry::names() const {
  return names_where([](const Entry&) { return true; });
}

std::vector<std::string> StrategyRegistry::unavailable_strategies() const {
  return names_where([](const Entry& e) { return e.availability != Availability::Available; });
}

std::string StrategyRegistry::str() const {
  std::string out;
  for (const auto& name : names()) {
    const Entry e = get(name);
    out +=
        fmt::format("{}: {}", e.name, e.description.empty() ? "(no description)" : e.description);
    if (e.availability == Availability::Upcoming) out += " [not yet available]";
    if (e.availability == Availability::Unsupported) out += " [not supported in C++]";
    out += "\n";
  }
  return out;
}

}  // namespace cppfabric::strategies
