// What the file loggers (CSVLogger, TensorBoardLogger) share: the version_N / log_dir logic,
// Python's float text, metric prefixes, the rank-zero check. Private.
//
//   detail::LogDirectory dir("logs", "exp", VersionArg{}, "CSVLogger");  // validates
//   dir.version();  // "3" when logs/exp holds version_0 .. version_2 (picked once, then kept)
//   dir.log_dir();  // logs/exp/version_3
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "cppfabric/loggers/logger.hpp"

namespace cppfabric::loggers::detail {

/// Where a logger writes: root_dir/name/version_N (or root_dir/name/<string version>), with the
/// version picked on first use when unset, as Python's loggers do. Not thread-safe: the loggers
/// call it under their own lock.
class LogDirectory {
 public:
  /// std::invalid_argument, naming `logger`, for an empty root_dir or a bad version.
  LogDirectory(std::filesystem::path root_dir, std::string name, VersionArg version,
               const char* logger);

  const std::filesystem::path& root_dir() const { return root_dir_; }
  const std::string& name() const { return name_; }
  /// "N" for version_N (the next free number when unset, picked once), or the string version.
  std::string version() const;
  /// root_dir/name/version_N, or root_dir/name/<string version>.
  std::filesystem::path log_dir() const;

 private:
  std::filesystem::path root_dir_;
  std::string name_;
  mutable VersionArg version_;
};

/// Python's `str(float)`: the shortest text that reads back the same double ("0.1", "1.0",
/// "1e-05", "1e+16", "inf", "nan").
std::string python_float_repr(double value);
/// The next free version number under `dir`: 1 + the largest N of the `version_N` folders, or 0.
int next_version(const std::filesystem::path& dir);
/// "prefix<separator>key" for every key when `prefix` is not empty.
std::map<std::string, double> add_prefix(const std::map<std::string, double>& metrics,
                                         const std::string& prefix, const std::string& separator);
/// Checks a VersionArg (a negative number or an empty string is rejected).
void validate_version(const VersionArg& version, const char* logger);
/// True on global rank 0 (Python's @rank_zero_only).
bool is_rank_zero();
/// Creates `path` and its parents; std::runtime_error naming the path (and `who`) on failure.
void create_directories(const std::string& path, const char* who);

}  // namespace cppfabric::loggers::detail
