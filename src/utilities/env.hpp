// Reading environment variables: the one place that turns an LT_* / PL_* / OMP_* variable into a
// value, so every reader agrees on what "unset" and "an integer" mean. Private.
//
//   if (detail::env_int("LT_CLI_USED", "0 or 1").value_or(0) != 0) { ... }
//   std::optional<std::string> seed = detail::env_string("PL_GLOBAL_SEED");  // raw, may be ""
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cppfabric::detail {

/// The variable's value as set (possibly empty); nullopt when it is not set.
std::optional<std::string> env_string(const std::string& name);

/// Python's int() on a decimal string: optional surrounding whitespace, an optional sign, digits.
/// nullopt for anything else (including "" and values outside int64).
std::optional<int64_t> parse_int(std::string_view text);

/// The variable as an integer; nullopt when it is unset or empty. Throws std::invalid_argument
/// "NAME='value' is not an integer; it must be <must_be>." otherwise.
std::optional<int64_t> env_int(const std::string& name, std::string_view must_be);

}  // namespace cppfabric::detail
