// TensorBoardLogger: scalars, hyperparameters and (through experiment()) histograms, images and
// text as TensorBoard event files
// (`root_dir/name/version_N[/sub_dir]/events.out.tfevents.<time>.<host>.<pid>.<n>`), the files
// Python Lightning Fabric's TensorBoardLogger writes. No TensorFlow or protobuf library is needed.
//
//   auto tb = std::make_shared<cppfabric::loggers::TensorBoardLogger>("logs");
//   cppfabric::Fabric fabric({.loggers = {tb}});
//   fabric.log("train/loss", loss.item<double>(), step);  // a scalar curve "train/loss"
//   // The HPARAMS tab, with the placeholder metric hp_metric = -1 ...
//   tb->log_hyperparams({{"lr", 3e-4}, {"optimizer", "adamw"}});
//   // ... or with your own metric:
//   tb->log_hyperparams({{"lr", 3e-4}}, {{"val/acc", 0.91}});
//   // Nested hyperparameters (any cppfabric::Value dict) are flattened to "group/name" keys:
//   cppfabric::Value hp = cppfabric::Value::dict();
//   hp.set("optimizer", cppfabric::Value::dict({{"name", "adamw"}, {"lr", 3e-4}}));
//   tb->log_hyperparams(hp);                        // optimizer/name, optimizer/lr
//   // A group of curves on one chart (Python's dict-valued metric -> add_scalars):
//   tb->log_metrics(TensorBoardLogger::NestedMetrics{
//       {"loss", std::map<std::string, double>{{"train", 0.3}, {"val", 0.4}}}, {"lr", 3e-4}}, step);
//   // The SummaryWriter itself (loggers/summary_writer.hpp), as Python's `logger.experiment`:
//   tb->experiment().add_histogram("fc1/weight", weight, step);
//   tb->finalize("success");  // flush and close
//
//   // Options by name, including the SummaryWriter's max_queue / flush_secs:
//   cppfabric::loggers::TensorBoardLogger logger("logs", {.name = "cifar10", .sub_dir = "train"});
//   // Positional, in Python's order: (root_dir, name, version, default_hp_metric, prefix, sub_dir)
//   cppfabric::loggers::TensorBoardLogger logger2("logs", "cifar10", 3, false, "train");
//
// Then: `tensorboard --logdir logs`. Events are buffered and written after `max_queue` events or
// `flush_secs` seconds (checked when logging), on save()/finalize(), and on destruction. Only
// global rank 0 writes anything.
#pragma once

#include <concepts>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "cppfabric/loggers/logger.hpp"
#include "cppfabric/loggers/summary_writer.hpp"
#include "cppfabric/value.hpp"

namespace cppfabric::loggers {

struct TensorBoardLoggerOptions {
  /// Experiment folder under root_dir; "" puts the versions directly in root_dir.
  std::string name = "lightning_logs";
  /// Unset: one more than the largest existing version_N (or 0).
  VersionArg version = {};
  /// log_hyperparams without metrics logs the placeholder metric `hp_metric = -1`.
  bool default_hp_metric = true;
  /// Put before every metric name, joined with "-".
  std::string prefix = "";
  /// An extra folder below the version folder (e.g. "train", "val").
  std::optional<std::string> sub_dir = std::nullopt;
  /// Flush after this many buffered events (SummaryWriter's max_queue; >= 1).
  int max_queue = 10;
  /// ... or when this many seconds passed since the last flush (SummaryWriter's flush_secs; > 0).
  double flush_secs = 120.0;
  /// Appended to the event file name.
  std::string filename_suffix = "";
};

class TensorBoardLogger : public Logger {
 public:
  static constexpr const char* LOGGER_JOIN_CHAR = "-";

  /// A metric value of log_metrics(NestedMetrics): a number, or a group of curves written as
  /// SummaryWriter::add_scalars (Python's dict-valued metric).
  using MetricValue = std::variant<double, std::map<std::string, double>>;
  using NestedMetrics = std::map<std::string, MetricValue>;

  /// Positional arguments in Python's order: (root_dir, name, version, default_hp_metric, prefix,
  /// sub_dir).
  explicit TensorBoardLogger(std::filesystem::path root_dir)
      : TensorBoardLogger(std::move(root_dir), TensorBoardLoggerOptions{}) {}
  // (Templates: a braced `{.name = ...}` second argument always means the options, and the fourth
  // argument must be a real bool -- a string there, the old prefix position, does not compile.)
  template <typename Name, typename HpMetric = bool>
  requires std::convertible_to<Name, std::string> && std::same_as<HpMetric, bool> TensorBoardLogger(
      std::filesystem::path root_dir, Name&& name, VersionArg version = {},
      HpMetric default_hp_metric = true, std::string prefix = "",
      std::optional<std::string> sub_dir = std::nullopt)
      : TensorBoardLogger(std::move(root_dir),
                          TensorBoardLoggerOptions{.name = std::string(std::forward<Name>(name)),
                                                   .version = std::move(version),
                                                   .default_hp_metric = default_hp_metric,
                                                   .prefix = std::move(prefix),
                                                   .sub_dir = std::move(sub_dir)}) {}
  /// The same by name, plus default_hp_metric, max_queue, flush_secs and filename_suffix.
  TensorBoardLogger(std::filesystem::path root_dir, TensorBoardLoggerOptions options);
  /// Flushes and closes the event file (errors are reported on the console, not thrown).
  ~TensorBoardLogger() override;
  TensorBoardLogger(const TensorBoardLogger&) = delete;
  TensorBoardLogger& operator=(const TensorBoardLogger&) = delete;

  std::string name() const override;
  std::string version() const override;
  std::string root_dir() const override;
  /// root_dir/name/version_N[/sub_dir], with `~` and `$VARS` expanded as in Python.
  std::string log_dir() const override;
  std::optional<std::string> sub_dir() const;
  /// The event file being written ("" before the first event).
  std::string event_file_path() const;

  /// The SummaryWriter writing to log_dir() (created on first use, with root_dir), as Python's
  /// `logger.experiment`; on ranks other than 0 a writer that writes nothing.
  SummaryWriter& experiment();

  /// One scalar event per metric (names prefixed); `step` unset writes step 0.
  void log_metrics(const Metrics& metrics, std::optional<int64_t> step = std::nullopt) override;
  /// As above; a map value becomes experiment().add_scalars(prefixed name, map, step), as Python.
  /// (A template only so that a braced list always picks the overload above.)
  template <typename M>
  requires std::same_as<M, NestedMetrics>
  void log_metrics(const M& metrics, std::optional<int64_t> step = std::nullopt) {
    log_nested_metrics(metrics, step);
  }
  /// The hparams plugin's experiment, session-start and session-end summaries; with
  /// default_hp_metric, first logs `hp_metric = -1` as the metric the HPARAMS tab shows.
  void log_hyperparams(const HParams& params) override;
  /// As above, with the metrics to relate the hyperparameters to (logged as scalars first).
  /// Nothing is written when `metrics` is empty.
  void log_hyperparams(const HParams& params, const Metrics& metrics,
                       std::optional<int64_t> step = std::nullopt);
  /// Nested hyperparameters: a cppfabric::Value dict, flattened as Python's _flatten_dict
  /// ("group/name"); values that are not bool, int, float or str become their Python str()
  /// (None -> "None", [1, 2] -> "[1, 2]"), a one-element tensor its number. Throws
  /// std::invalid_argument when `params` is not a dict.
  template <typename V>
  requires std::same_as<V, cppfabric::Value>
  void log_hyperparams(const V& params) { log_hyperparams(flatten_hparams(params)); }
  template <typename V>
  requires std::same_as<V, cppfabric::Value>
  void log_hyperparams(const V& params, const Metrics& metrics,
                       std::optional<int64_t> step = std::nullopt) {
    log_hyperparams(flatten_hparams(params), metrics, step);
  }
  /// The flattening log_hyperparams(Value) applies.
  static HParams flatten_hparams(const cppfabric::Value& params);
  using Logger::log_hyperparams;
  /// Flushes the event file (creating it if nothing was logged yet).
  void save() override;
  /// Flushes and closes the event file; logging afterwards starts a new file.
  void finalize(const std::string& status) override;

 private:
  void log_nested_metrics(const NestedMetrics& metrics, std::optional<int64_t> step);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cppfabric::loggers
