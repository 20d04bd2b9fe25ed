// What happens to an exception that escapes main (or a thread): instead of the C++ runtime's
// "terminate called after throwing an instance of ..." and SIGABRT, cppfabric prints the
// exception once, whole (its type, what(), and any std::nested_exception chain), every line
// prefixed with the rank when several processes run, in a single write(2) so two ranks' messages
// never interleave, and exits with status 1 (as Python does after an uncaught exception).
//
// Fabric's constructor installs the handler; call install_terminate_handler() to have it earlier.
// Your own std::set_terminate() afterwards replaces it. Catching is still the better habit:
//
//   int main() try {
//     cppfabric::Fabric fabric(...);
//     ...
//   } catch (const std::exception& e) {
//     std::cerr << e.what() << "\n";
//     return 1;
//   }
#pragma once

#include <exception>
#include <string>

namespace cppfabric::utilities {

/// Installs the handler described above (idempotent).
void install_terminate_handler();

/// The text the handler prints for `error` ("[rank: R] " before every line when world_size > 1),
/// ending in a newline. Without an exception: "terminate called without an active exception".
std::string uncaught_exception_message(std::exception_ptr error, int rank, int world_size);

}  // namespace cppfabric::utilities
