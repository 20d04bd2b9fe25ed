// Private: how work queued on a device runs (recorded into a CUDA graph, copied asynchronously).
#pragma once

#include <c10/core/Device.h>

namespace cppfabric::utilities {

/// True while the current CUDA stream of `device` is capturing (cudaStreamIsCapturing). False for
/// every non-CUDA device and in builds without CUDA; never initialises CUDA for a CPU device.
bool cuda_stream_capturing(const c10::Device& device);

/// The `non_blocking` flag for a copy to `target`: true unless it is host memory. A non-blocking
/// copy from a CUDA device to the host returns before the data has arrived (into pinned memory),
/// so host code reading the result at once could read it too early.
inline bool non_blocking_to(const c10::Device& target) { return !target.is_cpu(); }

}  // namespace cppfabric::utilities
