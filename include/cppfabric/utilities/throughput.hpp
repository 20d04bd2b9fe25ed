// Throughput: batches / samples / items / FLOPs per second over a sliding window, and the model
// FLOPs utilisation (MFU), with Python Lightning Fabric's metric names.
//
//   cppfabric::utilities::ThroughputMonitor throughput(fabric);  // world size, peak FLOPs
//                                                                //   from fabric
//   auto t0 = std::chrono::steady_clock::now();
//   for (int64_t i = 1; i <= steps; ++i) {
//     train_step();
//     if (fabric.device().is_cuda()) torch::cuda::synchronize();  // or the time is wrong
//     double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
//     throughput.update({.time = t, .batches = i, .samples = i * batch_size});
//     if (i % 10 == 0) throughput.compute_and_log(i);              // -> fabric.log_dict
//   }
//
// Without a Fabric: `Throughput t({.world_size = 1, .window_size = 50}); ... t.compute()`.
// compute() always has "time", "batches", "samples" ("lengths"); once `window_size` updates
// are in: "device/batches_per_sec", "device/samples_per_sec" ("device/items_per_sec"), with
// world_size > 1 also "batches_per_sec", "samples_per_sec" ("items_per_sec") for all devices;
// with `flops` in every update: "device/flops_per_sec" ("flops_per_sec" with world_size > 1)
// and "device/mfu" when the device's peak FLOPs are known.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>

namespace cppfabric {
class Fabric;
}

namespace cppfabric::utilities {

struct ThroughputOptions {
  /// Peak FLOP/s of one device (for "device/mfu"); unset: no MFU.
  std::optional<double> available_flops = std::nullopt;
  /// Devices across all hosts (> 0); the all-device metrics appear when > 1.
  int world_size = 1;
  /// Updates in the rolling window (> 1).
  int window_size = 100;
  /// Between "device" and the metric name.
  std::string separator = "/";
};

/// One `update`: running totals since the start, per device (Python's keyword arguments).
struct ThroughputUpdate {
  /// Seconds elapsed since the start; must increase with every update.
  double time = 0;
  /// Batches seen; must increase.
  int64_t batches = 0;
  /// Samples seen (>= batches); must increase.
  int64_t samples = 0;
  /// Items seen, e.g. tokens (>= samples); give it in every update or never.
  std::optional<int64_t> lengths = std::nullopt;
  /// FLOPs this device ran since the previous update (not a running total).
  std::optional<double> flops = std::nullopt;
};

class Throughput {
 public:
  explicit Throughput(ThroughputOptions options = {});
  virtual ~Throughput() = default;

  /// std::invalid_argument when a counter does not increase, samples < batches or
  /// lengths < samples; std::runtime_error when lengths are given in some updates only.
  void update(const ThroughputUpdate& update);
  /// The metrics described above. std::runtime_error before the first update.
  std::map<std::string, double> compute() const;
  void reset();
  const ThroughputOptions& options() const { return options_; }

 private:
  ThroughputOptions options_;
  std::deque<double> time_;
  std::deque<int64_t> batches_;
  std::deque<int64_t> samples_;
  std::deque<int64_t> lengths_;
  std::deque<double> flops_;
};

struct ThroughputMonitorOptions {
  /// Updates in the rolling window (> 1).
  int window_size = 100;
  std::string separator = "/";
  /// Peak FLOP/s of one device; unset: looked up from fabric's device and precision.
  std::optional<double> available_flops = std::nullopt;
};

/// Throughput tied to a Fabric: the world size and peak FLOPs come from it, and
/// compute_and_log sends the metrics to fabric.log_dict. update/compute/compute_and_log/reset
/// act on global rank 0 only (compute returns {} elsewhere), as in Python.
class ThroughputMonitor {
 public:
  explicit ThroughputMonitor(Fabric& fabric, ThroughputMonitorOptions options = {});

  void update(const ThroughputUpdate& update);
  std::map<std::string, double> compute() const;
  /// compute(), then fabric.log_dict(metrics, step); `step` unset: one more than the last
  /// step used (the first is 0).
  std::map<std::string, double> compute_and_log(std::optional<int64_t> step = std::nullopt);
  void reset();

  /// The step of the last compute_and_log (-1 before the first).
  int64_t step() const { return step_; }
  const Throughput& throughput() const { return throughput_; }

 private:
  Fabric& fabric_;
  Throughput throughput_;
  int64_t step_ = -1;
};

/// Dense peak FLOP/s of a GPU from Lightning's table, by its CUDA name (e.g. "NVIDIA H100 80GB
/// HBM3") and a dtype: "float64", "float32", "tfloat32", "bfloat16", "float16", "int8", "int4".
/// nullopt (with a warning on rank 0) for a GPU or dtype the table lacks; std::invalid_argument
/// for another dtype name.
std::optional<double> get_available_flops(const std::string& device_name, const std::string& dtype);
/// The same for a device and dtype: a CUDA device's name is queried, float32 counts as
/// "tfloat32" on Ampere or newer when the float32 matmul precision is not "highest"; CPUs give
/// nullopt.
std::optional<double> get_available_flops(const c10::Device& device, c10::ScalarType dtype);

}  // namespace cppfabric::utilities
