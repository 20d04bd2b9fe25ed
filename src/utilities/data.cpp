#include "cppfabric/utilities/data.hpp"

#include <sched.h>

#include <stdexcept>
#include <thread>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::utilities {

int num_cpus_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int count = CPU_COUNT(&set);
    if (count > 0) return count;
  }
  const unsigned hardware = std::thread::hardware_concurrency();
  return hardware > 0 ? static_cast<int>(hardware) : 1;
}

int suggested_max_num_workers(int local_world_size) {
  if (local_world_size < 1) {
    throw std::invalid_argument(fmt::format(
        "suggested_max_num_workers(local_world_size={}): must be at least 1 (the number of "
        "processes on this machine).",
        local_world_size));
  }
  // One CPU of each process's share stays with its main thread, as in Python.
  const int share = num_cpus_available() / local_world_size - 1;
  return share > 1 ? share : 1;
}

}  // namespace cppfabric::utilities
