// The default intra-op thread count of each process in a run: what `fabric.launch()` sets and what
// `cppfabric run` gives its processes as OMP_NUM_THREADS, when the user has not set it. Private.
#pragma once

namespace cppfabric::detail {

/// CPU cores this process may run on (its CPU affinity, as `taskset` or a cgroup cpuset leave it);
/// the online core count when the affinity cannot be read. At least 1.
int num_cpus_available();

/// Python's _suggested_max_num_threads: num_cpus_available() / num_processes, at least 1. Throws
/// std::invalid_argument for num_processes < 1.
int suggested_max_num_threads(int num_processes);

}  // namespace cppfabric::detail
