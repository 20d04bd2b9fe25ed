#include "cppfabric/utilities/throughput.hpp"

#include <ATen/Context.h>

#ifdef CPPFABRIC_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/fabric.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/strategies/strategy.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::utilities {

// ------------------------------------------------------------------ Throughput

Throughput::Throughput(ThroughputOptions options) : options_(std::move(options)) {
  if (options_.world_size <= 0) {
    throw std::invalid_argument(
        fmt::format("Throughput(world_size={}): the number of devices must be at least 1.",
                    options_.world_size));
  }
  if (options_.window_size <= 1) {
    throw std::invalid_argument(fmt::format(
        "Throughput(window_size={}): the window must hold at least 2 updates (rates are the "
        "difference between its first and last entries).",
        options_.window_size));
  }
}

namespace {
template <typename T>
void check_increasing(const std::deque<T>& window, T value, const char* name) {
  if (!window.empty() && window.back() >= value) {
    throw std::invalid_argument(fmt::format(
        "Throughput.update: `{}` must increase with every update (it is a running total), but "
        "it went from {} to {}.",
        name, window.back(), value));
  }
}

template <typename T>
void push(std::deque<T>& window, T value, std::size_t max) {
  window.push_back(value);
  while (window.size() > max) window.pop_front();
}
}  // namespace

void Throughput::update(const ThroughputUpdate& u) {
  // Every check first, so that a rejected update leaves the windows as they were.
  check_increasing(time_, u.time, "time");
  if (u.samples < u.batches) {
    throw std::invalid_argument(fmt::format(
        "Throughput.update: expected samples ({}) to be greater than or equal to batches ({}).",
        u.samples, u.batches));
  }
  check_increasing(batches_, u.batches, "batches");
  check_increasing(samples_, u.samples, "samples");
  const auto max = static_cast<std::size_t>(options_.window_size);
  if (u.lengths) {
    if (*u.lengths < u.samples) {
      throw std::invalid_argument(fmt::format(
          "Throughput.update: expected lengths ({}) to be greater than or equal to samples ({}).",
          *u.lengths, u.samples));
    }
    check_increasing(lengths_, *u.lengths, "lengths");
    const std::size_t samples_after = std::min(samples_.size() + 1, max);
    const std::size_t lengths_after = std::min(lengths_.size() + 1, max);
    if (samples_after != lengths_after) {
      throw std::runtime_error(fmt::format(
          "Throughput.update: if lengths are passed ({}), there needs to be the same number of "
          "samples ({}). Pass `lengths` in every update or in none.",
          lengths_after, samples_after));
    }
  }
  push(time_, u.time, max);
  push(batches_, u.batches, max);
  push(samples_, u.samples, max);
  if (u.lengths) push(lengths_, *u.lengths, max);
  // Summed over the devices.
  if (u.flops) push(flops_, *u.flops * options_.world_size, max);
}

std::map<std::string, double> Throughput::compute() const {
  if (time_.empty()) {
    throw std::runtime_error(
        "Throughput.compute() was called before any update(): call update({.time = ..., "
        ".batches = ..., .samples = ...}) first.");
  }
  const std::string device = "device" + options_.separator;
  const auto max = static_cast<std::size_t>(options_.window_size);
  const bool global = options_.world_size > 1;
  const double world = options_.world_size;
  std::map<std::string, double> metrics{
      {"time", time_.back()},
      {"batches", static_cast<double>(batches_.back())},
      {"samples", static_cast<double>(samples_.back())},
  };
  if (!lengths_.empty()) metrics["lengths"] = static_cast<double>(lengths_.back());

  if (time_.size() == max) {
    const double elapsed_time = time_.back() - time_.front();
    const double elapsed_batches = static_cast<double>(batches_.back() - batches_.front());
    const double elapsed_samples = static_cast<double>(samples_.back() - samples_.front());
    const double device_batches = elapsed_batches / elapsed_time;
    const double device_samples = elapsed_samples / elapsed_time;
    metrics[device + "batches_per_sec"] = device_batches;
    metrics[device + "samples_per_sec"] = device_samples;
    if (global) {
      metrics["batches_per_sec"] = device_batches * world;
      metrics["samples_per_sec"] = device_samples * world;
    }
    if (lengths_.size() == max) {
      const double device_items =
          static_cast<double>(lengths_.back() - lengths_.front()) / elapsed_time;
      metrics[device + "items_per_sec"] = device_items;
      if (global) metrics["items_per_sec"] = device_items * world;
    }
  }
  if (flops_.size() == max) {
    // As Python: the FLOPs of every update in the window but the first one, over the window's
    // time.
    const double elapsed_flops =
        std::accumulate(flops_.begin(), flops_.end(), 0.0) - flops_.front();
    const double elapsed_time = time_.back() - time_.front();
    const double flops_per_sec = elapsed_flops / elapsed_time;
    const double device_flops = flops_per_sec / world;
    if (global) metrics["flops_per_sec"] = flops_per_sec;
    metrics[device + "flops_per_sec"] = device_flops;
    if (options_.available_flops && *options_.available_flops != 0) {
      metrics[device + "mfu"] = device_flops / *options_.available_flops;
    }
  }
  return metrics;
}

void Throughput::reset() {
  time_.clear();
  batches_.clear();
  samples_.clear();
  lengths_.clear();
  flops_.clear();
}

// ------------------------------------------------------------------ peak FLOPs

namespace {
using FlopsTable = std::map<std::string, std::map<std::string, double>>;

const FlopsTable& cuda_flops() {
  // Dense peak FLOP/s per GPU and dtype: the numbers Lightning's table carries (from NVIDIA's
  // data sheets).
  // clang-format off
  static const FlopsTable table = {
      // Hopper
      {"h200 sxm1", {{"float64", 3.4e13}, {"float32", 6.7e13}, {"tfloat32", 9.9e14},
                     {"bfloat16", 2.0e15}, {"float16", 2.0e15}, {"int8", 4.0e15}}},
      {"h200 nvl1", {{"float64", 3.0e13}, {"float32", 6.0e13}, {"tfloat32", 8.4e14},
                     {"bfloat16", 1.7e15}, {"float16", 1.7e15}, {"int8", 3.3e15}}},
      {"h100 nvl", {{"float64", 67e12}, {"float32", 133.8e12}, {"tfloat32", 989.4e12},
                    {"bfloat16", 1978.8e12}, {"float16", 1978.8e12}, {"int8", 3957.8e12}}},
      {"h100 sxm", {{"float64", 33.5e12}, {"float32", 66.9e12}, {"tfloat32", 494.7e12},
                    {"bfloat16", 989.4e12}, {"float16", 989.4e12}, {"int8", 1978.9e12}}},
      {"h100 pcie", {{"float64", 25.6e12}, {"float32", 51.2e12}, {"tfloat32", 378e12},
                     {"bfloat16", 756e12}, {"float16", 756e12}, {"int8", 1513e12}}},
      // Ada
      {"rtx 4090", {{"float32", 82.6e12}, {"tfloat32", 82.6e12}, {"bfloat16", 82.6e12},
                    {"float16", 82.6e12}, {"int8", 660.6e12}, {"int4", 1321.2e12}}},
      {"rtx 4080", {{"float32", 48.7e12}, {"tfloat32", 48.7e12}, {"bfloat16", 48.7e12},
                    {"float16", 48.7e12}, {"int8", 389.9e12}, {"int4", 779.8e12}}},
      {"rtx 4080 super", {{"float32", 52.2e12}, {"tfloat32", 52.2e12}, {"bfloat16", 52.2e12},
                          {"float16", 52.2e12}, {"int8", 417.6e12}, {"int4", 835.2e12}}},
      {"l4", {{"float32", 30.3e12}, {"tfloat32", 60e12}, {"bfloat16", 121e12},
              {"float16", 121e12}, {"int8", 242e12}, {"int4", 484e12}}},
      {"l40", {{"float32", 90.5e12}, {"tfloat32", 90.5e12}, {"bfloat16", 181e12},
               {"float16", 181e12}, {"int8", 362e12}, {"int4", 724e12}}},
      // Ampere
      {"a100", {{"float64", 9.7e12}, {"float32", 19.5e12}, {"tfloat32", 156e12},
                {"bfloat16", 312e12}, {"float16", 312e12}, {"int8", 624e12}}},
      {"a6000", {{"float32", 38.7e12}, {"tfloat32", 77.4e12}, {"bfloat16", 38.7e12},
                 {"float16", 38.7e12}, {"int8", 309.7e12}, {"int4", 619.3e12}}},
      {"a40", {{"float32", 37.4e12}, {"tfloat32", 74.8e12}, {"bfloat16", 37.4e12},
               {"float16", 37.4e12}, {"int8", 299.3e12}, {"int4", 598.7e12}}},
      {"a10g", {{"float32", 31.2e12}, {"tfloat32", 62.5e12}, {"bfloat16", 125e12},
                {"float16", 125e12}, {"int8", 250e12}, {"int4", 500e12}}},
      {"rtx 3090 ti", {{"float32", 40e12}, {"tfloat32", 40e12}, {"bfloat16", 40e12},
                       {"float16", 40e12}, {"int8", 320e12}, {"int4", 640e12}}},
      {"rtx 3090", {{"float32", 35.6e12}, {"tfloat32", 35.6e12}, {"bfloat16", 35.6e12},
                    {"float16", 35.6e12}, {"int8", 284e12}, {"int4", 568e12}}},
      {"rtx 3080 ti", {{"float32", 34.1e12}, {"tfloat32", 34.1e12}, {"bfloat16", 34.1e12},
                       {"float16", 34.1e12}, {"int8", 272.8e12}, {"int4", 546.6e12}}},
      {"rtx 3080", {{"float32", 29.8e12}, {"tfloat32", 29.8e12}, {"bfloat16", 29.8e12},
                    {"float16", 29.8e12}, {"int8", 238e12}, {"int4", 476e12}}},
      {"rtx 3070", {{"float32", 20.3e12}, {"tfloat32", 20.3e12}, {"bfloat16", 20.3e12},
                    {"float16", 20.3e12}, {"int8", 162.6e12}, {"int4", 325.2e12}}},
      // Turing
      {"t4", {{"float32", 8.1e12}, {"float16", 65e12}, {"int8", 130e12}, {"int4", 260e12}}},
      {"quadro rtx 5000", {{"float32", 11.2e12}, {"float16", 89.2e12}}},
      {"rtx 2080 super",
       {{"float32", 11.2e12}, {"float16", 22.3e12}, {"int8", 178.4e12}, {"int4", 356.8e12}}},
      {"rtx 2080 ti",
       {{"float32", 14.2e12}, {"float16", 28.5e12}, {"int8", 227.7e12}, {"int4", 455.4e12}}},
      {"rtx 2080",
       {{"float32", 10.6e12}, {"float16", 21.2e12}, {"int8", 169.6e12}, {"int4", 339.1e12}}},
      {"rtx 2070 super",
       {{"float32", 9.1e12}, {"float16", 18.1e12}, {"int8", 145e12}, {"int4", 290e12}}},
      {"titan rtx",
       {{"float32", 16.3e12}, {"float16", 32.6e12}, {"int8", 261e12}, {"int4", 522e12}}},
      // Volta
      {"v100 sxm", {{"float64", 7.8e12}, {"float32", 15.7e12}, {"float16", 125e12}}},
      {"v100 pcie", {{"float64", 7e12}, {"float32", 14e12}, {"float16", 112e12}}},
      {"v100s pcie", {{"float64", 8.2e12}, {"float32", 16.4e12}, {"float16", 130e12}}},
  };
  // clang-format on
  return table;
}

bool contains(const std::string& text, const char* part) {
  return text.find(part) != std::string::npos;
}

/// Lightning's mapping of a CUDA device name to a table entry ("" when it knows none).
std::string chip_of(const std::string& device_name) {
  std::string chip = device_name;
  std::transform(chip.begin(), chip.end(), chip.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (contains(chip, "h200")) {
    if (contains(chip, "sxm1")) return "h200 sxm1";
    if (contains(chip, "nvl1")) return "h200 nvl1";
    return chip;
  }
  if (contains(chip, "h100")) {
    if (contains(chip, "hbm3")) return "h100 sxm";
    if (contains(chip, "nvl")) return "h100 nvl";
    if (contains(chip, "pcie") || contains(chip, "hbm2e")) return "h100 pcie";
    return chip;
  }
  if (contains(chip, "l4")) return contains(chip, "tesla") ? "l40" : "l4";
  if (contains(chip, "geforce rtx")) {
    std::vector<std::string> words;
    std::stringstream stream(chip);
    for (std::string word; std::getline(stream, word, ' ');) words.push_back(word);
    if (words.size() < 4) return chip;
    std::string extra;
    if (contains(chip, "super")) {
      extra = " super";
    } else if (contains(chip, "ti")) {
      extra = " ti";
    }
    return "rtx " + words[3] + extra;
  }
  for (const char* name : {"a6000", "a100", "a40", "a10g", "t4", "quadro rtx 5000", "titan rtx"}) {
    if (contains(chip, name)) return name;
  }
  if (contains(chip, "v100-sxm")) return "v100 sxm";
  if (contains(chip, "v100-pcie")) return "v100 pcie";
  if (contains(chip, "v100s-pcie")) return "v100s pcie";
  return "";
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kDouble:
      return "float64";
    case c10::kFloat:
      return "float32";
    case c10::kBFloat16:
      return "bfloat16";
    case c10::kHalf:
      return "float16";
    case c10::kChar:
      return "int8";
    default:
      return c10::toString(dtype);
  }
}

/// The compute dtype of a precision setting, as Lightning's _plugin_to_compute_dtype.
c10::ScalarType compute_dtype(const std::string& precision) {
  if (precision == "16-mixed" || precision == "16-true") return c10::kHalf;
  if (precision == "bf16-mixed" || precision == "bf16-true") return c10::kBFloat16;
  if (precision == "64-true") return c10::kDouble;
  if (precision == "transformer-engine" || precision == "transformer-engine-float16") {
    return c10::kChar;
  }
  return c10::kFloat;
}
}  // namespace

std::optional<double> get_available_flops(const std::string& device_name,
                                          const std::string& dtype) {
  static const char* const kDtypes[] = {"float64", "float32", "tfloat32", "bfloat16",
                                        "float16", "int8",    "int4"};
  if (std::find(std::begin(kDtypes), std::end(kDtypes), dtype) == std::end(kDtypes)) {
    throw std::invalid_argument(fmt::format(
        "get_available_flops(dtype=\"{}\"): unknown dtype; use one of float64, float32, "
        "tfloat32, bfloat16, float16, int8, int4.",
        dtype));
  }
  const std::string chip = chip_of(device_name);
  if (chip.empty()) {
    rank_zero_warn(fmt::format("FLOPs not found for '{}'", device_name));
    return std::nullopt;
  }
  const auto& table = cuda_flops();
  const auto entry = table.find(chip);
  if (entry == table.end()) {
    rank_zero_warn(fmt::format("FLOPs not found for '{}', chip is '{}'", device_name, chip));
    return std::nullopt;
  }
  const auto value = entry->second.find(dtype);
  if (value == entry->second.end()) {
    rank_zero_warn(fmt::format("'{}' does not support {}", device_name, dtype));
    return std::nullopt;
  }
  return std::trunc(value->second);
}

std::optional<double> get_available_flops(const c10::Device& device, c10::ScalarType dtype) {
  if (!device.is_cuda()) return std::nullopt;
#ifdef CPPFABRIC_WITH_CUDA
  const auto* properties = at::cuda::getDeviceProperties(device.has_index() ? device.index() : 0);
  std::string name = dtype_name(dtype);
  if (dtype == c10::kFloat && properties->major >= 8 &&
      at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST) {
    name = "tfloat32";
  }
  const std::vector<std::string> known = {"float64",  "float32", "tfloat32",
                                          "bfloat16", "float16", "int8"};
  if (std::find(known.begin(), known.end(), name) == known.end()) {
    rank_zero_warn(fmt::format("'{}' does not support {}", properties->name, name));
    return std::nullopt;
  }
  return get_available_flops(std::string(properties->name), name);
#else
  rank_zero_warn("FLOPs not found: cppfabric was built without CUDA support.");
  return std::nullopt;
#endif
}

// ------------------------------------------------------------------ ThroughputMonitor

namespace {
ThroughputOptions monitor_options(Fabric& fabric, const ThroughputMonitorOptions& options) {
  std::optional<double> flops = options.available_flops;
  if (!flops) {
    const auto& precision = fabric.strategy()->precision();
    const c10::ScalarType dtype =
        precision ? compute_dtype(precision->name()) : c10::ScalarType::Float;
    flops = get_available_flops(fabric.device(), dtype);
  }
  return ThroughputOptions{.available_flops = flops,
                           .world_size = fabric.world_size(),
                           .window_size = options.window_size,
                           .separator = options.separator};
}
}  // namespace

ThroughputMonitor::ThroughputMonitor(Fabric& fabric, ThroughputMonitorOptions options)
    : fabric_(fabric), throughput_(monitor_options(fabric, options)) {}

void ThroughputMonitor::update(const ThroughputUpdate& update) {
  if (fabric_.global_rank() != 0) return;
  throughput_.update(update);
}

std::map<std::string, double> ThroughputMonitor::compute() const {
  if (fabric_.global_rank() != 0) return {};
  return throughput_.compute();
}

std::map<std::string, double> ThroughputMonitor::compute_and_log(std::optional<int64_t> step) {
  if (fabric_.global_rank() != 0) return {};
  step_ = step ? *step : step_ + 1;
  auto metrics = throughput_.compute();
  fabric_.log_dict(metrics, step_);
  return metrics;
}

void ThroughputMonitor::reset() {
  if (fabric_.global_rank() != 0) return;
  throughput_.reset();
}

}  // namespace cppfabric::utilities
