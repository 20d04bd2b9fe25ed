#pragma once
// What the benchmarks that re-run themselves share: running a child and reading the numbers it
// prints, running several modes round by round in rotating order (each a child run of this program
// with the flags it got), and min / median / max. Their command lines: Flags (tests/flags.hpp,
// shared with the programs the distributed tests start).
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../tests/flags.hpp"

namespace cppfabric::bench {

// Runs `command` and returns its output; throws with the whole output when it exits non-zero.
inline std::string run_child(const std::string& command, const std::string& what) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  std::string output;
  char buffer[512];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  const int status = ::pclose(pipe);
  if (status != 0) throw std::runtime_error(what + " failed:\n" + output);
  return output;
}

// The number printed right after `marker` in `output`; throws with the output when there is none.
inline double read_number(const std::string& output, const std::string& marker,
                          const std::string& what) {
  const auto at = output.find(marker);
  if (at == std::string::npos) {
    throw std::runtime_error(what + " printed no '" + marker + "':\n" + output);
  }
  return std::stod(output.substr(at + marker.size()));
}

// Runs a command (a benchmark's own child run) and returns the number printed after `marker` in its
// output; throws with the whole output when it fails or prints no such number.
inline double run_and_read_number(const std::string& command, const std::string& marker,
                                  const std::string& what) {
  return read_number(run_child(command, what), marker, what);
}

// The path of this executable, to run it again as a child.
inline std::string self_path() {
  char self[4096];
  const auto n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) throw std::runtime_error("cannot find this executable (/proc/self/exe)");
  return std::string(self, static_cast<std::size_t>(n));
}

// values[mode][marker][round]: the numbers after each marker in each child run's output.
using Samples = std::map<std::string, std::map<std::string, std::vector<double>>>;

// Runs `command_for(mode)` for every mode, `rounds` times, rotating the order each round (no mode
// always runs first while the machine's load drifts), and reads each of `markers` from every run.
inline Samples run_rounds(int rounds, const std::vector<std::string>& modes,
                          const std::function<std::string(const std::string&)>& command_for,
                          const std::vector<std::string>& markers) {
  Samples values;
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t k = 0; k < modes.size(); ++k) {
      const auto& mode = modes[(k + static_cast<std::size_t>(r)) % modes.size()];
      const auto output = run_child(command_for(mode), "mode " + mode);
      for (const auto& marker : markers) {
        values[mode][marker].push_back(read_number(output, marker, "mode " + mode));
      }
    }
  }
  return values;
}

// The flags of the benchmarks that run themselves once per mode (bench_ddp, bench_sharded), bound
// to the fields of `a` of those names: --rounds --steps --batch --width --layers --threads, and
// --mode (one of `modes`; empty, the default: this run is the driver).
template <typename Args>
testing::Flags mode_flags(Args& a, const std::vector<std::string>& modes) {
  testing::Flags flags;
  flags.add("--rounds", &a.rounds)
      .add("--steps", &a.steps)
      .add("--batch", &a.batch)
      .add("--width", &a.width)
      .add("--layers", &a.layers)
      .add("--threads", &a.threads)
      .add("--mode", &a.mode, modes);
  return flags;
}

// run_rounds() over child runs of this program with the flags it got (`flags`, but --rounds) and
// --mode M.
inline Samples run_modes(const testing::Flags& flags, int rounds,
                         const std::vector<std::string>& modes,
                         const std::vector<std::string>& markers) {
  const std::string self = self_path() + flags.forward({"--rounds", "--mode"});
  return run_rounds(
      rounds, modes, [&](const std::string& mode) { return self + " --mode " + mode + " 2>&1"; },
      markers);
}

struct Stats {
  double min = 0, median = 0, max = 0;
};
inline Stats stats(std::vector<double> v) {
  if (v.empty()) throw std::invalid_argument("stats of no values");
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

// Element-wise a[i] / b[i] (per-round ratios of two modes measured in the same rounds).
inline std::vector<double> ratios(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> out;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) out.push_back(a[i] / b[i]);
  return out;
}

}  // namespace cppfabric::bench
