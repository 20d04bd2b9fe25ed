// CSVLogger: metrics to `root_dir/name/version_N/metrics.csv`, the file Python Lightning Fabric's
// CSVLogger writes, byte for byte (sorted columns plus "step", CRLF line ends, Python's float
// text), so pandas, spreadsheets and existing scripts read it unchanged.
//
//   // Writes logs/lightning_logs/version_N/metrics.csv:
//   auto csv = std::make_shared<cppfabric::loggers::CSVLogger>("logs");
//   cppfabric::Fabric fabric({.loggers = {csv}});
//   fabric.log_dict({{"train/loss", 0.25}, {"train/acc", 0.9}}, step);
//   csv->log_hyperparams({{"lr", 3e-4}, {"batch_size", 128}});  // hparams.yaml
//   csv->finalize("success");  // or let it flush when destroyed
//
//   // Options by name instead of by position:
//   cppfabric::loggers::CSVLogger logger("logs", {.name = "cifar10",
//                                                 .flush_logs_every_n_steps = 10});
//
// Rows are buffered and written every `flush_logs_every_n_steps` steps, on save()/finalize() and
// when the logger is destroyed. When a flush brings new metric names, the file is rewritten with
// the wider header (old rows get empty cells). Only global rank 0 writes anything.
#pragma once

#include <concepts>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/loggers/logger.hpp"

namespace cppfabric::loggers {

struct CSVLoggerOptions {
  /// Experiment folder under root_dir; "" puts the versions directly in root_dir.
  std::string name = "lightning_logs";
  /// Unset: one more than the largest existing version_N (or 0).
  VersionArg version = {};
  /// Put before every metric name, joined with "-" ("train-loss").
  std::string prefix = "";
  /// Write buffered rows when (step + 1) is a multiple of this (>= 1).
  int flush_logs_every_n_steps = 100;
};

class CSVLogger : public Logger {
 public:
  /// Python's separator between `prefix` and a metric name.
  static constexpr const char* LOGGER_JOIN_CHAR = "-";
  static constexpr const char* NAME_METRICS_FILE = "metrics.csv";
  static constexpr const char* NAME_HPARAMS_FILE = "hparams.yaml";

  /// Python's positional arguments: (root_dir, name, version, prefix, flush_logs_every_n_steps).
  explicit CSVLogger(std::filesystem::path root_dir)
      : CSVLogger(std::move(root_dir), CSVLoggerOptions{}) {}
  // (A template, so that a braced `{.name = ...}` second argument always means the options.)
  template <typename Name>
  requires std::convertible_to<Name, std::string> CSVLogger(std::filesystem::path root_dir,
                                                            Name&& name, VersionArg version = {},
                                                            std::string prefix = "",
                                                            int flush_logs_every_n_steps = 100)
      : CSVLogger(std::move(root_dir),
                  CSVLoggerOptions{.name = std::string(std::forward<Name>(name)),
                                   .version = std::move(version),
                                   .prefix = std::move(prefix),
                                   .flush_logs_every_n_steps = flush_logs_every_n_steps}) {}
  /// The same by name: CSVLogger("logs", {.name = "cifar10", .flush_logs_every_n_steps = 10}).
  CSVLogger(std::filesystem::path root_dir, CSVLoggerOptions options);
  /// Writes the rows still buffered (errors are reported on the console, not thrown).
  ~CSVLogger() override;
  CSVLogger(const CSVLogger&) = delete;
  CSVLogger& operator=(const CSVLogger&) = delete;

  std::string name() const override;
  /// "N" for version_N (picked on first use when unset), or the string version.
  std::string version() const override;
  std::string root_dir() const override;
  /// root_dir/name/version_N (or root_dir/name/<string version>).
  std::string log_dir() const override;
  /// log_dir/metrics.csv.
  std::string metrics_file_path() const;

  /// Buffers one row (metric names prefixed; `step` defaults to the number of rows buffered
  /// since the last flush, as in Python) and flushes when (step + 1) % flush_logs_every_n_steps
  /// == 0. Creates the log directory on first use.
  void log_metrics(const Metrics& metrics, std::optional<int64_t> step = std::nullopt) override;
  /// Merges `params` into the hyperparameters and rewrites log_dir/hparams.yaml (as PyTorch
  /// Lightning's CSVLogger does; Python Fabric's CSVLogger has no hyperparameter support).
  void log_hyperparams(const HParams& params) override;
  using Logger::log_hyperparams;
  /// Writes the buffered rows to metrics.csv.
  void save() override;
  /// save(), when anything was logged.
  void finalize(const std::string& status) override;

  /// The column names written so far (sorted, "step" included).
  std::vector<std::string> metrics_keys() const;
  /// Rows logged but not yet written.
  std::size_t buffered_rows() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cppfabric::loggers
