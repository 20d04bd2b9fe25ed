#include "utilities/env.hpp"

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::detail {

std::optional<std::string> env_string(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

std::optional<int64_t> parse_int(std::string_view text) {
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  // from_chars takes a leading '-' but not '+'; int() takes both.
  if (text.size() > 1 && text.front() == '+' && std::isdigit(static_cast<unsigned char>(text[1]))) {
    text.remove_prefix(1);
  }
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
    return std::nullopt;
  }
  return value;
}

std::optional<int64_t> env_int(const std::string& name, std::string_view must_be) {
  const auto value = env_string(name);
  if (!value || value->empty()) return std::nullopt;
  if (auto parsed = parse_int(*value)) return parsed;
  throw std::invalid_argument(
      fmt::format("{}='{}' is not an integer; it must be {}.", name, *value, must_be));
}

}  // namespace cppfabric::detail
