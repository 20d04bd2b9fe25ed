#pragma once
// The command lines of the programs the distributed tests start (tests/distributed/programs/) and
// of the benchmarks (bench/): "--name value" flags and "--name" switches bound to variables.
// read() / parse() fill them in; forward() writes them back for a child run of the same program.
// No LibTorch here: the benchmarks' drivers include it too.
#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace cppfabric::testing {

class Flags {
 public:
  Flags& add(const std::string& name, int* value) { return put(name, value); }
  Flags& add(const std::string& name, int64_t* value) { return put(name, value); }
  Flags& add(const std::string& name, double* value) { return put(name, value); }
  Flags& add(const std::string& name, std::string* value) { return put(name, value); }
  // A value out of `choices` only.
  Flags& add(const std::string& name, std::string* value, std::vector<std::string> choices) {
    put(name, value);
    flags_.back().choices = std::move(choices);
    return *this;
  }
  // Comma-separated integers ("2,3").
  Flags& add(const std::string& name, std::vector<int>* value) { return put(name, value); }
  // A switch: "--name" (no value) sets *value to true.
  Flags& add(const std::string& name, bool* value) { return put(name, value); }

  // Reads argv[1..]; throws std::invalid_argument naming the flag and what it takes on an unknown
  // flag, a missing value, a value that is not a number, or one that is not among the choices.
  void read(int argc, char** argv) const {
    for (int i = 1; i < argc; ++i) {
      const std::string name = argv[i];
      const Flag* flag = find(name);
      if (flag == nullptr) {
        throw std::invalid_argument("unknown flag " + name + " (valid flags:" + usage() + ")");
      }
      if (auto* p = std::get_if<bool*>(&flag->target)) {
        **p = true;
        continue;
      }
      if (i + 1 >= argc) {
        throw std::invalid_argument("no value for " + name + " (" + name + " " + takes(*flag) +
                                    ")");
      }
      set(*flag, argv[++i]);
    }
  }

  // read(), but prints its error to stderr and returns false.
  bool parse(int argc, char** argv) const {
    try {
      read(argc, argv);
      return true;
    } catch (const std::invalid_argument& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return false;
    }
  }

  // " --name value" for every flag but those in `skip`; switches that are on appear bare, off ones
  // and empty strings and lists (a default: they cannot be written on a command line) not at all.
  std::string forward(const std::vector<std::string>& skip) const {
    std::string out;
    for (const auto& flag : flags_) {
      bool skipped = false;
      for (const auto& s : skip) skipped = skipped || s == flag.name;
      if (skipped) continue;
      if (auto* p = std::get_if<bool*>(&flag.target)) {
        if (**p) out.append(" ").append(flag.name);
        continue;
      }
      const std::string value = text(flag.target);
      if (!value.empty()) out.append(" ").append(flag.name).append(" ").append(value);
    }
    return out;
  }

 private:
  using Target = std::variant<bool*, int*, int64_t*, double*, std::string*, std::vector<int>*>;
  struct Flag {
    std::string name;
    Target target;
    std::vector<std::string> choices;  // empty: any value
  };

  template <typename T>
  Flags& put(const std::string& name, T* value) {
    flags_.push_back({name, Target(value), {}});
    return *this;
  }

  const Flag* find(const std::string& name) const {
    for (const auto& flag : flags_) {
      if (flag.name == name) return &flag;
    }
    return nullptr;
  }

  // What a flag takes, as usage text: "N", "X", "TEXT", "a|b|c", "N,N,...".
  static std::string takes(const Flag& flag) {
    if (!flag.choices.empty()) {
      std::string out;
      for (const auto& c : flag.choices) out.append(out.empty() ? "" : "|").append(c);
      return out;
    }
    if (std::holds_alternative<int*>(flag.target) || std::holds_alternative<int64_t*>(flag.target))
      return "N";
    if (std::holds_alternative<double*>(flag.target)) return "X";
    if (std::holds_alternative<std::vector<int>*>(flag.target)) return "N,N,...";
    return "TEXT";
  }

  std::string usage() const {
    std::string out;
    for (const auto& flag : flags_) {
      out.append(" ").append(flag.name);
      if (!std::holds_alternative<bool*>(flag.target)) out.append(" ").append(takes(flag));
    }
    return out;
  }

  // The whole of `value` as an integer in [lo, hi].
  static int64_t integer(const std::string& name, const std::string& value, int64_t lo,
                         int64_t hi) {
    std::size_t used = 0;
    long long n = 0;
    bool in_range = true;
    try {
      n = std::stoll(value, &used);
    } catch (const std::out_of_range&) {
      in_range = false;
      used = value.size();
    } catch (const std::invalid_argument&) {
      used = 0;
    }
    if (used == 0 || used != value.size()) {
      throw std::invalid_argument(name + " " + value + ": not an integer (" + name + " N)");
    }
    if (!in_range || n < lo || n > hi) {
      throw std::invalid_argument(name + " " + value + ": out of range (from " +
                                  std::to_string(lo) + " to " + std::to_string(hi) + ")");
    }
    return n;
  }

  void set(const Flag& flag, const std::string& value) const {
    const std::string& name = flag.name;
    constexpr int64_t kIntMin = std::numeric_limits<int>::min();
    constexpr int64_t kIntMax = std::numeric_limits<int>::max();
    if (auto* p = std::get_if<int*>(&flag.target)) {
      **p = static_cast<int>(integer(name, value, kIntMin, kIntMax));
    } else if (auto* p = std::get_if<int64_t*>(&flag.target)) {
      **p = integer(name, value, std::numeric_limits<int64_t>::min(),
                    std::numeric_limits<int64_t>::max());
    } else if (auto* p = std::get_if<double*>(&flag.target)) {
      std::size_t used = 0;
      try {
        **p = std::stod(value, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != value.size()) {
        throw std::invalid_argument(name + " " + value + ": not a number (" + name + " X)");
      }
    } else if (auto* p = std::get_if<std::vector<int>*>(&flag.target)) {
      std::vector<int> list;
      std::size_t from = 0;
      while (true) {
        const auto comma = value.find(',', from);
        const auto item = value.substr(from, comma == std::string::npos ? comma : comma - from);
        try {
          list.push_back(static_cast<int>(integer(name, item, kIntMin, kIntMax)));
        } catch (const std::invalid_argument&) {
          throw std::invalid_argument(name + " " + value + ": not integers separated by commas (" +
                                      name + " " + takes(flag) + ")");
        }
        if (comma == std::string::npos) break;
        from = comma + 1;
      }
      **p = std::move(list);
    } else {
      if (!flag.choices.empty()) {
        bool valid = false;
        for (const auto& c : flag.choices) valid = valid || c == value;
        if (!valid) {
          std::string choices;
          for (const auto& c : flag.choices) choices.append(choices.empty() ? "" : ", ").append(c);
          throw std::invalid_argument(name + " " + value + ": valid choices are " + choices);
        }
      }
      *std::get<std::string*>(flag.target) = value;
    }
  }

  static std::string text(const Target& target) {
    if (auto* p = std::get_if<int*>(&target)) return std::to_string(**p);
    if (auto* p = std::get_if<int64_t*>(&target)) return std::to_string(**p);
    if (auto* p = std::get_if<double*>(&target)) {
      char buffer[32];
      std::snprintf(buffer, sizeof(buffer), "%.17g", **p);
      return buffer;
    }
    if (auto* p = std::get_if<std::vector<int>*>(&target)) {
      std::string out;
      for (int v : **p) out.append(out.empty() ? "" : ",").append(std::to_string(v));
      return out;
    }
    return *std::get<std::string*>(target);
  }

  std::vector<Flag> flags_;
};

}  // namespace cppfabric::testing
