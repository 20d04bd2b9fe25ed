#include "cuda_graph.hpp"

#ifdef CPPFABRIC_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace cppfabric::utilities {

bool cuda_stream_capturing(const c10::Device& device) {
#ifdef CPPFABRIC_WITH_CUDA
  if (!device.is_cuda()) return false;
  c10::cuda::CUDAGuard guard(device);
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
  (void)device;
  return false;
#endif
}

}  // namespace cppfabric::utilities
