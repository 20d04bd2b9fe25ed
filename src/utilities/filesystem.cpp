#include "utilities/filesystem.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace cppfabric::detail {

bool is_directory(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool is_regular_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

int make_directories(const std::string& path, std::string* failed) {
  if (path.empty() || is_directory(path)) return 0;
  // The parent: everything before the last '/' that is followed by a name ("a/b/" -> "a").
  const auto last = path.find_last_not_of('/');
  const auto slash = last == std::string::npos ? std::string::npos : path.find_last_of('/', last);
  if (slash != std::string::npos && slash > 0) {
    if (const int error = make_directories(path.substr(0, slash), failed)) return error;
  }
  if (::mkdir(path.c_str(), 0777) != 0) {
    const int error = errno;
    if (error == EEXIST && is_directory(path)) return 0;  // made by someone else meanwhile
    if (failed != nullptr) *failed = path;
    return error;
  }
  return 0;
}

std::string make_directories_error_text(int error) {
  return error == EEXIST ? "a file has that name" : std::strerror(error);
}

}  // namespace cppfabric::detail
