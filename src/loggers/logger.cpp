#include "cppfabric/loggers/logger.hpp"

#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "loggers/logger_detail.hpp"
#include "utilities/filesystem.hpp"

namespace cppfabric::loggers::detail {

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // Shortest round-trip digits, then Python's layout: positional when the decimal exponent
  // lies in [-4, 16), scientific otherwise, always with a ".0" or an exponent.
  char buffer[64];
  const auto result =
      std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  std::string text(buffer, result.ptr);
  std::string sign;
  if (!text.empty() && text[0] == '-') {
    sign = "-";
    text.erase(0, 1);
  }
  const std::size_t e = text.find('e');
  std::string digits = text.substr(0, e);
  const int exponent = std::atoi(text.c_str() + e + 1);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  // `digits` = d1 d2 ... dn; the value is d1.d2...dn x 10^exponent.
  const int point = exponent + 1;  // the position of the decimal point after d1...
  if (exponent < -4 || exponent >= 16) {
    std::string mantissa = digits.substr(0, 1);
    // (append, not `"." + string`: GCC 12 reports a false -Wstringop-overflow for the latter)
    if (digits.size() > 1) mantissa.append(1, '.').append(digits, 1, std::string::npos);
    return fmt::format("{}{}e{}{:02d}", sign, mantissa, exponent < 0 ? '-' : '+',
                       std::abs(exponent));
  }
  std::string out;
  if (point <= 0) {
    out.assign("0.").append(static_cast<std::size_t>(-point), '0').append(digits);
  } else if (static_cast<std::size_t>(point) >= digits.size()) {
    out = digits + std::string(static_cast<std::size_t>(point) - digits.size(), '0') + ".0";
  } else {
    out = digits.substr(0, static_cast<std::size_t>(point)) + "." +
          digits.substr(static_cast<std::size_t>(point));
  }
  return sign + out;
}

int next_version(const std::filesystem::path& dir) {
  DIR* handle = ::opendir(dir.c_str());
  if (handle == nullptr) return 0;
  int best = -1;
  while (const dirent* entry = ::readdir(handle)) {
    const std::string name = entry->d_name;
    if (name.rfind("version_", 0) != 0 || !cppfabric::detail::is_directory((dir / name).string())) {
      continue;
    }
    // As Python: the text between the first and the second "_" must be all digits.
    const std::string rest = name.substr(8);
    const std::string number = rest.substr(0, rest.find('_'));
    if (number.empty() || number.size() > 9 ||
        number.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    best = std::max(best, std::stoi(number));
  }
  ::closedir(handle);
  return best + 1;
}

void create_directories(const std::string& path, const char* who) {
  std::string failed;
  if (const int error = cppfabric::detail::make_directories(path, &failed)) {
    throw std::runtime_error(fmt::format(
        "{}: cannot create the log directory '{}': '{}': {}. Pass a writable root_dir.", who, path,
        failed, error == EEXIST ? "a file of that name exists" : std::strerror(error)));
  }
}

LogDirectory::LogDirectory(std::filesystem::path root_dir, std::string name, VersionArg version,
                           const char* logger)
    : root_dir_(std::move(root_dir)), name_(std::move(name)), version_(std::move(version)) {
  if (root_dir_.empty()) {
    throw std::invalid_argument(fmt::format(
        "{}(root_dir=\"\"): pass the folder to write logs under, e.g. \"logs\" or \".\".", logger));
  }
  validate_version(version_, logger);
}

std::string LogDirectory::version() const {
  if (version_.is_auto()) version_ = VersionArg(next_version(root_dir_ / name_));
  return version_.text() ? *version_.text() : std::to_string(*version_.number());
}

std::filesystem::path LogDirectory::log_dir() const {
  // A number (given or picked) names the folder version_N; a string names it as is.
  const std::string dir =
      version_.is_auto() || version_.number() ? "version_" + version() : version();
  return root_dir_ / name_ / dir;
}

std::map<std::string, double> add_prefix(const std::map<std::string, double>& metrics,
                                         const std::string& prefix, const std::string& separator) {
  if (prefix.empty()) return metrics;
  std::map<std::string, double> out;
  for (const auto& [key, value] : metrics) out.emplace(prefix + separator + key, value);
  return out;
}

void validate_version(const VersionArg& version, const char* logger) {
  if (version.number() && *version.number() < 0) {
    throw std::invalid_argument(fmt::format(
        "{}(version={}): a version number must be >= 0. Pass a number N (directory version_N), a "
        "directory name, or leave it unset to pick the next free version.",
        logger, *version.number()));
  }
  if (version.text() && version.text()->empty()) {
    throw std::invalid_argument(fmt::format(
        "{}(version=\"\"): a version string must not be empty. Pass a number N (directory "
        "version_N), a directory name, or leave it unset to pick the next free version.",
        logger));
  }
}

bool is_rank_zero() { return utilities::current_rank() == 0; }

}  // namespace cppfabric::loggers::detail
