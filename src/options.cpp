#include "cppfabric/options.hpp"

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/precision/precision.hpp"

namespace cppfabric {
namespace {
std::string list_repr(const std::vector<int>& ids) {
  return fmt::format("[{}]", fmt::join(ids, ", "));
}
}  // namespace

bool DevicesArg::is_auto() const {
  const auto* s = std::get_if<std::string>(&value_);
  return s != nullptr && *s == "auto";
}

std::string DevicesArg::repr() const {
  if (const auto* s = std::get_if<std::string>(&value_)) return fmt::format("'{}'", *s);
  if (const auto* n = std::get_if<int>(&value_)) return std::to_string(*n);
  return list_repr(std::get<std::vector<int>>(value_));
}

std::string DevicesArg::str() const {
  if (const auto* s = std::get_if<std::string>(&value_)) return *s;
  return repr();
}

std::string PrecisionArg::repr() const {
  if (const auto* s = std::get_if<std::string>(&value_)) return fmt::format("'{}'", *s);
  return str();
}

std::string PrecisionArg::str() const {
  if (const auto* s = std::get_if<std::string>(&value_)) return *s;
  if (const auto* n = std::get_if<int>(&value_)) return std::to_string(*n);
  if (const auto* p = std::get_if<std::shared_ptr<precision::Precision>>(&value_)) {
    return *p ? (*p)->describe() : "nullptr";
  }
  return "None";
}

}  // namespace cppfabric
