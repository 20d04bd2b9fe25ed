// File-system helpers on POSIX calls, for everything that links LibTorch. Private.
//
//   std::string failed;
//   if (const int error = detail::make_directories("logs/exp/version_0", &failed))
//     throw std::runtime_error(fmt::format("cannot create '{}': {}", failed,
//                                          detail::make_directories_error_text(error)));
//
// (LibTorch's wheel exports its own old copies of several std::filesystem functions, which a
// process linked with it may call instead of libstdc++'s; its remove_all crashes. So: no
// std::filesystem operations here, nor in the callers.)
#pragma once

#include <string>

namespace cppfabric::detail {

/// mkdir -p: creates `path` and its missing parents (mode 0777, less the umask). Returns 0 when
/// `path` is a folder afterwards, or the errno of the first folder that could not be made, whose
/// path goes to `*failed` (when given). EEXIST means something that is not a folder has its name.
int make_directories(const std::string& path, std::string* failed = nullptr);
/// Why make_directories failed, in words: "a file has that name" for EEXIST, strerror otherwise.
std::string make_directories_error_text(int error);

bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);

}  // namespace cppfabric::detail
