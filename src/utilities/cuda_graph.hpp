// Private: whether work queued now on a device would be recorded into a CUDA graph instead of run.
#pragma once

#include <c10/core/Device.h>

namespace cppfabric::utilities {

/// True while the current CUDA stream of `device` is capturing (cudaStreamIsCapturing). False for
/// every non-CUDA device and in builds without CUDA; never initialises CUDA for a CPU device.
bool cuda_stream_capturing(const c10::Device& device);

}  // namespace cppfabric::utilities
