// Private: the message of an exception without LibTorch's C++ backtrace (c10::Error::what()
// carries one; what we raise never does).
#pragma once

#include <exception>
#include <string>

namespace cppfabric::detail {

/// what_without_backtrace() for a c10::Error, what() for anything else.
std::string error_message(const std::exception& error);

}  // namespace cppfabric::detail
