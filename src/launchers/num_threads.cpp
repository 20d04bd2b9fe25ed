#include "launchers/num_threads.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::detail {

int num_cpus_available() {
  // Not std::thread::hardware_concurrency(): it counts every core of the machine, ignoring affinity.
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

int suggested_max_num_threads(int num_processes) {
  if (num_processes < 1) {
    throw std::invalid_argument(
        fmt::format("`num_processes` should be >= 1, got {}.", num_processes));
  }
  return std::max(1, num_cpus_available() / num_processes);
}

}  // namespace cppfabric::detail
