// Logger: where `fabric.log` / `fabric.log_dict` send scalars (on global rank 0 only).
//
//   struct PrintLogger : cppfabric::loggers::Logger {
//     std::string name() const override { return "print"; }
//     void log_metrics(const Metrics& m, std::optional<int64_t> step) override { ... }
//   };
//   Fabric fabric({.loggers = {std::make_shared<PrintLogger>()}});
//
// Ready-made loggers: CSVLogger (loggers/csv.hpp) and TensorBoardLogger (loggers/tensorboard.hpp).
// Hyperparameters are a map of names to bool, integer, floating-point or string values:
//
//   logger->log_hyperparams({{"lr", 3e-4}, {"epochs", 20}, {"optimizer", "adamw"}});
#pragma once

#include <concepts>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>

namespace cppfabric::loggers {

/// One hyperparameter value: Python's bool, int, float or str.
using HParamValue = std::variant<bool, int64_t, double, std::string>;
/// Hyperparameters by name. Nested groups are written as "group/name" keys.
using HParams = std::map<std::string, HParamValue>;

/// A logger's `version` argument: unset (pick the next free `version_N`), a number N (the
/// directory `version_N`) or a string (the directory name as is), as Python's `int | str | None`.
class VersionArg {
 public:
  VersionArg() = default;
  VersionArg(std::nullopt_t) {}                               // NOLINT(google-explicit-constructor)
  VersionArg(int number) : number_(number) {}                 // NOLINT(google-explicit-constructor)
  VersionArg(std::optional<int> number) : number_(number) {}  // NOLINT
  VersionArg(const char* text) : text_(text) {}               // NOLINT(google-explicit-constructor)
  VersionArg(std::string text) : text_(std::move(text)) {}    // NOLINT(google-explicit-constructor)

  bool is_auto() const { return !number_ && !text_; }
  const std::optional<int>& number() const { return number_; }
  const std::optional<std::string>& text() const { return text_; }

 private:
  std::optional<int> number_;
  std::optional<std::string> text_;
};

class Logger {
 public:
  using Metrics = std::map<std::string, double>;
  virtual ~Logger() = default;
  virtual std::string name() const = 0;
  /// The version as text: "3" for `version_3`, or the string version as given.
  virtual std::string version() const { return ""; }
  virtual std::string root_dir() const { return ""; }
  virtual std::string log_dir() const { return ""; }
  /// How the logger groups names into sections ("/", as in Python).
  virtual std::string group_separator() const { return "/"; }
  virtual void log_metrics(const Metrics& metrics, std::optional<int64_t> step) = 0;
  virtual void log_hyperparams(const HParams& params) {}
  /// Hyperparameters given as strings only (kept for existing callers).
  template <typename M>
  requires std::same_as<M, std::map<std::string, std::string>>
  void log_hyperparams(const M& params) {
    HParams converted;
    for (const auto& [key, value] : params) converted.emplace(key, value);
    log_hyperparams(converted);
  }
  /// Writes buffered data to disk.
  virtual void save() {}
  /// Called once at the end of training with "success", "failed", ...; saves by default.
  virtual void finalize(const std::string& status) { save(); }
};

}  // namespace cppfabric::loggers
