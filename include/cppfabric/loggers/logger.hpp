// Logger: where `fabric.log` / `fabric.log_dict` send scalars (on global rank 0 only).
//
//   struct PrintLogger : cppfabric::loggers::Logger {
//     std::string name() const override { return "print"; }
//     void log_metrics(const Metrics& m, std::optional<int64_t> step) override { ... }
//   };
//   Fabric fabric({.loggers = {std::make_shared<PrintLogger>()}});
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace cppfabric::loggers {

class Logger {
 public:
  using Metrics = std::map<std::string, double>;
  virtual ~Logger() = default;
  virtual std::string name() const = 0;
  virtual std::string version() const { return ""; }
  virtual std::string root_dir() const { return ""; }
  virtual std::string log_dir() const { return ""; }
  virtual void log_metrics(const Metrics& metrics, std::optional<int64_t> step) = 0;
  virtual void log_hyperparams(const std::map<std::string, std::string>& params) {}
  virtual void save() {}
  virtual void finalize(const std::string& status) {}
};

}  // namespace cppfabric::loggers
