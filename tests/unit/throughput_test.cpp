// Throughput / ThroughputMonitor: numbers against Python Lightning Fabric's Throughput for the
// same updates (tests/python/throughput_reference.py), hand-computed cases, the FLOPs table,
// errors, and logging through Fabric.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cppfabric/fabric.hpp>
#include <cppfabric/loggers/logger.hpp>
#include <cppfabric/utilities/throughput.hpp>
#include <fstream>
#include <sstream>

#include "cppfabric/detail/fmt.hpp"
#include "test_utils.hpp"

using cppfabric::utilities::get_available_flops;
using cppfabric::utilities::Throughput;
using cppfabric::utilities::ThroughputMonitor;
using cppfabric::utilities::ThroughputUpdate;

namespace {

using Metrics = std::map<std::string, double>;

/// Python's compute() after every update, parsed from throughput_reference.py's output.
std::vector<Metrics> python_reference(const std::string& python, const std::string& ops) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string ops_file =
      fmt::format("{}/cppfabric_throughput_{}.tsv", tmp && *tmp ? tmp : "/tmp", ::getpid());
  std::ofstream(ops_file) << ops;
  int status = 0;
  const std::string output = cppfabric::testing::run_command(
      python + " " + CPPFABRIC_SOURCE_DIR + "/tests/python/throughput_reference.py " + ops_file +
          " 2>&1",
      &status);
  ::unlink(ops_file.c_str());
  EXPECT_EQ(status, 0) << output;
  std::vector<Metrics> results(1);
  std::stringstream stream(output);
  for (std::string line; std::getline(stream, line);) {
    if (line == "--") {
      results.emplace_back();
    } else if (const auto tab = line.find('\t'); tab != std::string::npos) {
      results.back()[line.substr(0, tab)] = std::stod(line.substr(tab + 1));
    }
  }
  results.pop_back();
  return results;
}

void expect_same(const Metrics& actual, const Metrics& expected, std::size_t index) {
  std::vector<std::string> actual_keys, expected_keys;
  for (const auto& [k, v] : actual) actual_keys.push_back(k);
  for (const auto& [k, v] : expected) expected_keys.push_back(k);
  EXPECT_EQ(actual_keys, expected_keys) << "after update " << index;
  for (const auto& [key, value] : expected) {
    auto it = actual.find(key);
    if (it == actual.end()) continue;
    EXPECT_NEAR(it->second, value, std::abs(value) * 1e-12) << key << " after update " << index;
  }
}

struct RecordingLogger : cppfabric::loggers::Logger {
  std::string name() const override { return "recording"; }
  void log_metrics(const Metrics& metrics, std::optional<int64_t> step) override {
    calls.emplace_back(metrics, step.value_or(-100));
  }
  std::vector<std::pair<Metrics, int64_t>> calls;
};

}  // namespace

TEST(Throughput, MatchesPythonAcrossWorldSizesLengthsAndFlops) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "no venv python (run scripts/bootstrap): no Python expectation";

  struct Case {
    int world_size, window;
    std::optional<double> available_flops;
    bool lengths, flops;
  };
  for (const Case& c : {Case{2, 4, 1e12, true, true}, Case{1, 3, std::nullopt, false, false},
                        Case{4, 2, 5e11, true, false}, Case{1, 5, 2e12, false, true}}) {
    Throughput throughput({.available_flops = c.available_flops,
                           .world_size = c.world_size,
                           .window_size = c.window});
    std::string ops = fmt::format("init\t{}\t{}\t{}\n", c.world_size, c.window,
                                  c.available_flops ? fmt::format("{}", *c.available_flops) : "-");
    std::vector<Metrics> actual;
    for (int64_t i = 1; i <= 8; ++i) {
      const double time = 0.37 * static_cast<double>(i) + 0.01 * static_cast<double>(i * i);
      const int64_t samples = 8 * i + (i % 3);
      const int64_t lengths = 100 * samples + 7 * i;
      const int64_t flops = 30000000000 + 1000000 * i;
      throughput.update({.time = time,
                         .batches = i,
                         .samples = samples,
                         .lengths = c.lengths ? std::optional<int64_t>(lengths) : std::nullopt,
                         .flops = c.flops ? std::optional<double>(flops) : std::nullopt});
      actual.push_back(throughput.compute());
      ops += fmt::format("update\t{:.17g}\t{}\t{}\t{}\t{}\n", time, i, samples,
                         c.lengths ? std::to_string(lengths) : "-",
                         c.flops ? std::to_string(flops) : "-");
    }
    const auto expected = python_reference(*python, ops);
    ASSERT_EQ(expected.size(), actual.size());
    for (std::size_t i = 0; i < actual.size(); ++i) expect_same(actual[i], expected[i], i + 1);
    // The full set of names once every window is full.
    if (c.world_size == 2) {
      for (const char* key :
           {"batches_per_sec", "samples_per_sec", "items_per_sec", "flops_per_sec",
            "device/batches_per_sec", "device/samples_per_sec", "device/items_per_sec",
            "device/flops_per_sec", "device/mfu", "time", "batches", "samples", "lengths"}) {
        EXPECT_TRUE(actual.back().count(key)) << key;
      }
    }
  }
}

TEST(Throughput, HandComputedWindow) {
  Throughput t({.available_flops = 100.0, .world_size = 2, .window_size = 3, .separator = "|"});
  t.update({.time = 1.0, .batches = 1, .samples = 4, .flops = 10});
  EXPECT_EQ(t.compute(), (Metrics{{"time", 1.0}, {"batches", 1.0}, {"samples", 4.0}}));
  t.update({.time = 2.0, .batches = 2, .samples = 8, .flops = 20});
  t.update({.time = 5.0, .batches = 5, .samples = 20, .flops = 30});
  const Metrics m = t.compute();
  EXPECT_DOUBLE_EQ(m.at("device|batches_per_sec"), 1.0);  // (5 - 1) / (5 - 1)
  EXPECT_DOUBLE_EQ(m.at("device|samples_per_sec"), 4.0);  // (20 - 4) / 4
  EXPECT_DOUBLE_EQ(m.at("batches_per_sec"), 2.0);         // x world size
  EXPECT_DOUBLE_EQ(m.at("samples_per_sec"), 8.0);
  // Flops are stored x world size: 20 + 40 + 60; the window sum minus its first entry.
  EXPECT_DOUBLE_EQ(m.at("flops_per_sec"), (120.0 - 20.0) / 4.0);
  EXPECT_DOUBLE_EQ(m.at("device|flops_per_sec"), 12.5);
  EXPECT_DOUBLE_EQ(m.at("device|mfu"), 0.125);
  EXPECT_FALSE(m.count("items_per_sec"));
  t.reset();
  EXPECT_THROW_WITH(t.compute(), std::runtime_error, "before any update");
}

TEST(Throughput, RejectsBadUpdatesAndKeepsItsState) {
  EXPECT_THROW_WITH(Throughput({.world_size = 0}), std::invalid_argument, "world_size=0");
  EXPECT_THROW_WITH(Throughput({.window_size = 1}), std::invalid_argument, "window_size=1");
  Throughput t({.window_size = 2});
  t.update({.time = 1.0, .batches = 1, .samples = 2, .lengths = 10});
  EXPECT_THROW_WITH(t.update({.time = 1.0, .batches = 2, .samples = 4, .lengths = 20}),
                    std::invalid_argument, "`time`", "1 to 1");
  EXPECT_THROW_WITH(t.update({.time = 2.0, .batches = 1, .samples = 4, .lengths = 20}),
                    std::invalid_argument, "`batches`");
  EXPECT_THROW_WITH(t.update({.time = 2.0, .batches = 3, .samples = 2}), std::invalid_argument,
                    "samples (2)", "batches (3)");
  EXPECT_THROW_WITH(t.update({.time = 2.0, .batches = 2, .samples = 4, .lengths = 3}),
                    std::invalid_argument, "lengths (3)", "samples (4)");
  EXPECT_EQ(t.compute().at("time"), 1.0);  // nothing of the rejected updates went in
  Throughput partial({.window_size = 3});
  partial.update({.time = 1.0, .batches = 1, .samples = 1});
  EXPECT_THROW_WITH(partial.update({.time = 2.0, .batches = 2, .samples = 2, .lengths = 5}),
                    std::runtime_error, "same number of samples");
}

TEST(Throughput, AvailableFlopsTable) {
  EXPECT_EQ(get_available_flops("NVIDIA H100 80GB HBM3", "bfloat16"), 989.4e12);
  EXPECT_EQ(get_available_flops("NVIDIA H100 PCIe", "float32"), 51.2e12);
  EXPECT_EQ(get_available_flops("NVIDIA H100 NVL", "int8"), 3957.8e12);
  EXPECT_EQ(get_available_flops("NVIDIA A100-SXM4-80GB", "tfloat32"), 156e12);
  EXPECT_EQ(get_available_flops("NVIDIA GeForce RTX 4090", "float16"), 82.6e12);
  EXPECT_EQ(get_available_flops("NVIDIA GeForce RTX 3080 Ti", "int4"), 546.6e12);
  EXPECT_EQ(get_available_flops("NVIDIA L4", "bfloat16"), 121e12);
  EXPECT_EQ(get_available_flops("Tesla V100-SXM2-16GB", "float64"), 7.8e12);
  cppfabric::testing::CaptureConsole console;
  EXPECT_EQ(get_available_flops("Tesla T4", "bfloat16"), std::nullopt);
  EXPECT_EQ(get_available_flops("Mystery Accelerator 9000", "float32"), std::nullopt);
  EXPECT_EQ(get_available_flops("NVIDIA H200", "float32"), std::nullopt);  // as Python
  EXPECT_NE(console.text().find("'Tesla T4' does not support bfloat16"), std::string::npos);
  EXPECT_NE(console.text().find("FLOPs not found for 'Mystery Accelerator 9000'"),
            std::string::npos);
  EXPECT_NE(console.text().find("chip is 'nvidia h200'"), std::string::npos) << console.text();
  EXPECT_THROW_WITH(get_available_flops("NVIDIA L4", "fp8"), std::invalid_argument, "fp8",
                    "bfloat16");
  EXPECT_EQ(get_available_flops(c10::Device(c10::kCPU), c10::kFloat), std::nullopt);
}

TEST(Throughput, MonitorLogsThroughFabric) {
  auto logger = std::make_shared<RecordingLogger>();
  cppfabric::Fabric fabric({.accelerator = "cpu", .devices = 1, .loggers = {logger}});
  ThroughputMonitor monitor(fabric, {.window_size = 2, .available_flops = 1000.0});
  EXPECT_EQ(monitor.throughput().options().world_size, 1);
  EXPECT_EQ(monitor.step(), -1);
  monitor.update({.time = 1.0, .batches = 1, .samples = 32, .flops = 100});
  monitor.compute_and_log();
  monitor.update({.time = 3.0, .batches = 2, .samples = 64, .flops = 100});
  const Metrics m = monitor.compute_and_log();
  monitor.compute_and_log(10);
  monitor.compute_and_log();
  ASSERT_EQ(logger->calls.size(), 4u);
  EXPECT_EQ(logger->calls[0].second, 0);
  EXPECT_EQ(logger->calls[1].second, 1);
  EXPECT_EQ(logger->calls[2].second, 10);
  EXPECT_EQ(logger->calls[3].second, 11);
  EXPECT_EQ(logger->calls[1].first, m);
  EXPECT_DOUBLE_EQ(m.at("device/samples_per_sec"), 16.0);
  EXPECT_DOUBLE_EQ(m.at("device/flops_per_sec"), 50.0);
  EXPECT_DOUBLE_EQ(m.at("device/mfu"), 0.05);
  EXPECT_FALSE(m.count("samples_per_sec"));  // world size 1: no all-device metrics
  // A CPU has no peak-FLOPs entry: no MFU unless given.
  ThroughputMonitor cpu(fabric);
  EXPECT_EQ(cpu.throughput().options().available_flops, std::nullopt);
}
