// Helpers shared by the unit tests: scoped environment variables and console capture.
#pragma once

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cppfabric/utilities/rank_zero.hpp>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>

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

/// Collects what cppfabric's console logger prints while alive.
class CaptureConsole {
 public:
  CaptureConsole() : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_)) {
    sink_->set_pattern("[%l] %v");
    utilities::console()->sinks().push_back(sink_);
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
