// Exception types used by cppfabric.
//
//   try { cppfabric::Fabric fabric({.accelerator = "tpu"}); }
//   catch (const std::invalid_argument& e) { ... }   // every bad option lands here
//
// Python's ValueError maps to std::invalid_argument, TypeError to cppfabric::TypeError and
// MisconfigurationException to cppfabric::MisconfigurationError (both std::invalid_argument
// subclasses); runtime failures are std::runtime_error.
#pragma once

#include <stdexcept>
#include <string>

namespace cppfabric {

/// A value of the wrong kind was passed (Python's TypeError).
class TypeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A combination of settings that cannot work (Python's MisconfigurationException).
class MisconfigurationError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A feature that a later release implements (e.g. a recognised strategy name).
class NotYetAvailableError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A feature of Python Fabric that cannot exist in C++ (e.g. strategy='xla'); the message says
/// why and what to use instead.
class NotSupportedError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace cppfabric
