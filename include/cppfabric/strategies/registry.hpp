// StrategyRegistry: the table of strategy names, as Python's STRATEGY_REGISTRY. The connector
// (`FabricOptions::strategy`), the `cppfabric run` CLI (`--strategy`) and every error message
// read this one table.
//
//   auto& registry = cppfabric::strategies::StrategyRegistry::global();
//   registry.available_strategies();     // {"ddp", "ddp_find_unused_parameters_true", ...}
//   registry.register_strategy(
//       "ddp_small_buckets",
//       [] {
//         return std::make_shared<cppfabric::strategies::DDPStrategy>(
//             cppfabric::strategies::DDPOptions{.bucket_cap_mb = 5});
//       },
//       "DDP with 5 MiB gradient buckets");
//   Fabric fabric({.strategy = "ddp_small_buckets", .devices = 2});
//
// Built-in strategies register their own names (DDPStrategy::register_strategies, ...) the first
// time the registry is used. Every name Python's registry holds is known here: those that
// cppfabric does not have (Python-only back ends such as XLA, DeepSpeed's engine, DataParallel,
// notebook and fork start methods) are registered as unavailable, with the reason and what to
// use instead, so that asking for them says why rather than "invalid name".
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace cppfabric::strategies {

class Strategy;

class StrategyRegistry {
 public:
  /// Makes a fresh, unwired strategy; the connector then gives it accelerator, precision,
  /// CheckpointIO, cluster environment and devices.
  using Factory = std::function<std::shared_ptr<Strategy>()>;

  enum class Availability {
    Available,    // has a factory
    Upcoming,     // a later cppfabric release implements it (NotYetAvailableError)
    Unsupported,  // cannot exist in C++ (NotSupportedError)
  };

  struct Entry {
    std::string name;
    std::string description;
    Availability availability = Availability::Available;
    Factory factory;     // set when available
    std::string reason;  // when not available: why, and what to use instead
  };

  /// An empty registry (tests, or a table of your own). Fabric reads global().
  StrategyRegistry() = default;
  /// The process-wide registry, with the built-in names.
  static StrategyRegistry& global();

  /// Adds `name`. std::invalid_argument when the name exists and `override` is false (Python's
  /// "'<name>' is already present in the registry. HINT: Use `override=True`.").
  void register_strategy(const std::string& name, Factory factory, std::string description = "",
                         bool override = false);
  /// Adds a name that is recognised but cannot be created; `reason` says why and what to use.
  void register_unavailable(const std::string& name, Availability availability, std::string reason,
                            std::string description = "", bool override = false);
  /// Removes `name`; false when it was not registered.
  bool remove(const std::string& name);

  bool contains(const std::string& name) const;
  /// The entry for `name`; std::out_of_range "'<name>' not found in registry. Available names:
  /// ..." otherwise (Python's KeyError).
  Entry get(const std::string& name) const;
  /// A new strategy for `name`. Throws NotYetAvailableError or NotSupportedError (both
  /// std::invalid_argument) with the entry's reason for names that cannot be created, and
  /// std::out_of_range for unknown names.
  std::shared_ptr<Strategy> create(const std::string& name) const;

  /// Names with a factory, sorted.
  std::vector<std::string> available_strategies() const;
  /// Every registered name, available or not, sorted.
  std::vector<std::string> names() const;
  /// Names that are registered but cannot be created here, sorted.
  std::vector<std::string> unavailable_strategies() const;
  /// One line per name: "name: description" (unavailable ones with their reason).
  std::string str() const;

 private:
  void add(Entry entry, bool override);
  std::vector<std::string> names_where(const std::function<bool(const Entry&)>& keep) const;

  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
};

}  // namespace cppfabric::strategies
