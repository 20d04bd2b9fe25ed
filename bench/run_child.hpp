#pragma once
// What the benchmarks that re-run themselves share: "--flag value" parsing (and forwarding the
// same flags to a child run), running a child and reading the numbers it prints, running several
// modes round by round in rotating order, and min / median / max.
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
#include <variant>
#include <vector>

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

// "--name value" flags bound to variables. parse() reads them; forward() writes them back for a
// child run of the same program.
class Flags {
 public:
  Flags& add(const std::string& name, int* value) { return put(name, value); }
  Flags& add(const std::string& name, int64_t* value) { return put(name, value); }
  Flags& add(const std::string& name, std::string* value) { return put(name, value); }

  // False (after printing the valid flags to stderr) on an unknown flag, a missing value or a
  // value that is not a number.
  bool parse(int argc, char** argv) const {
    for (int i = 1; i < argc; i += 2) {
      const std::string flag = argv[i];
      const auto it = std::find_if(flags_.begin(), flags_.end(),
                                   [&](const auto& f) { return f.first == flag; });
      if (it == flags_.end() || i + 1 >= argc) {
        std::fprintf(stderr, "%s %s (valid flags, each with a value:%s)\n",
                     it == flags_.end() ? "unknown flag" : "no value for", flag.c_str(),
                     names().c_str());
        return false;
      }
      const std::string value = argv[i + 1];
      try {
        if (auto* p = std::get_if<int*>(&it->second)) {
          **p = std::stoi(value);
        } else if (auto* p = std::get_if<int64_t*>(&it->second)) {
          **p = std::stoll(value);
        } else {
          *std::get<std::string*>(it->second) = value;
        }
      } catch (const std::exception&) {
        std::fprintf(stderr, "%s %s: not a number\n", flag.c_str(), value.c_str());
        return false;
      }
    }
    return true;
  }

  // " --name value" for every flag but those in `skip`.
  std::string forward(const std::vector<std::string>& skip) const {
    std::string out;
    for (const auto& [name, target] : flags_) {
      if (std::find(skip.begin(), skip.end(), name) != skip.end()) continue;
      out.append(" ").append(name).append(" ");
      if (auto* p = std::get_if<int*>(&target)) {
        out.append(std::to_string(**p));
      } else if (auto* p = std::get_if<int64_t*>(&target)) {
        out.append(std::to_string(**p));
      } else {
        out.append(*std::get<std::string*>(target));
      }
    }
    return out;
  }

 private:
  using Target = std::variant<int*, int64_t*, std::string*>;
  template <typename T>
  Flags& put(const std::string& name, T* value) {
    flags_.emplace_back(name, Target(value));
    return *this;
  }
  std::string names() const {
    std::string out;
    for (const auto& f : flags_) out.append(" ").append(f.first);
    return out;
  }
  std::vector<std::pair<std::string, Target>> flags_;
};

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
