// Data-loading helpers from Python's lightning.fabric.utilities.data.
//
//   const int local_world = fabric.world_size() / fabric.num_nodes();  // processes on this machine
//   data::DataLoader loader(dataset, {.batch_size = 128,
//       .num_workers = cppfabric::utilities::suggested_max_num_workers(local_world)});
#pragma once

namespace cppfabric::utilities {

/// Python's suggested_max_num_workers: the CPUs this process may run on (its affinity mask),
/// shared by the `local_world_size` processes on this machine, less one for the main thread of
/// each; at least 1. Throws std::invalid_argument for a local_world_size below 1.
int suggested_max_num_workers(int local_world_size);

/// The CPUs this process may run on (sched_getaffinity; std::thread::hardware_concurrency() where
/// that is unavailable; at least 1).
int num_cpus_available();

}  // namespace cppfabric::utilities
