// Helpers shared by the unit tests: scoped environment variables and console capture.
#pragma once

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cppfabric/utilities/rank_zero.hpp>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace cppfabric::testing {

/// Sets (or unsets, with nullopt) an environment variable and restores it on destruction.
class ScopedEnv {
 public:
  ScopedEnv(std::string name, std::optional<std::string> value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) previous_ = old;
    if (value) {
      ::setenv(name_.c_str(), value->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ~ScopedEnv() {
    if (previous_) {
      ::setenv(name_.c_str(), previous_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> previous_;
};

/// A test with none of the LT_* variables that override FabricOptions set.
class FabricEnvTest : public ::testing::Test {
 protected:
  ScopedEnv a_{"LT_ACCELERATOR", std::nullopt}, s_{"LT_STRATEGY", std::nullopt},
      d_{"LT_DEVICES", std::nullopt}, n_{"LT_NUM_NODES", std::nullopt},
      p_{"LT_PRECISION", std::nullopt}, c_{"LT_CLI_USED", std::nullopt};
};

/// Collects what cppfabric's console logger prints while alive.
class CaptureConsole {
 public:
  CaptureConsole() : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_)) {
    sink_->set_pattern("[%l] %v");
    utilities::console()->sinks().push_back(sink_);
    utilities::clear_shown_warnings();  // each capture sees its warnings, as pytest's do
  }
  ~CaptureConsole() {
    auto& sinks = utilities::console()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  std::string text() const { return stream_.str(); }

 private:
  std::ostringstream stream_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

/// The bootstrapped virtual environment's python (for reference checks against Python), or
/// nullopt when it is missing. Looks in $CPPFABRIC_CACHE, then ~/.cache/cppfabric.
inline std::optional<std::string> venv_python() {
  std::vector<std::string> roots;
  if (const char* cache = std::getenv("CPPFABRIC_CACHE")) roots.emplace_back(cache);
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"))
    roots.push_back(std::string(xdg) + "/cppfabric");
  if (const char* home = std::getenv("HOME"))
    roots.push_back(std::string(home) + "/.cache/cppfabric");
  for (const auto& root : roots) {
    const std::string python = root + "/venv/bin/python";
    struct stat info {};
    if (::stat(python.c_str(), &info) == 0) return python;
  }
  return std::nullopt;
}

/// Runs a shell command; returns its standard output and stores the exit status.
inline std::string run_command(const std::string& command, int* status) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *status = -1;
    return output;
  }
  std::array<char, 4096> buffer{};
  while (std::size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe))
    output.append(buffer.data(), n);
  *status = ::pclose(pipe);
  return output;
}

/// Expects `statement` to throw `Exception` whose message contains every one of `parts`.
#define EXPECT_THROW_WITH(statement, Exception, ...)                                    \
  do {                                                                                  \
    try {                                                                               \
      statement;                                                                        \
      ADD_FAILURE() << "expected " #Exception " from: " #statement;                     \
    } catch (const Exception& e) {                                                      \
      const std::string message = e.what();                                             \
      for (const std::string& part : std::initializer_list<std::string>{__VA_ARGS__}) { \
        EXPECT_NE(message.find(part), std::string::npos)                                \
            << "message lacks '" << part << "': " << message;                           \
      }                                                                                 \
    }                                                                                   \
  } while (0)

}  // namespace cppfabric::testing
