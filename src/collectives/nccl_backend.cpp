#include "collectives/nccl_backend.hpp"

#include <stdexcept>

#if defined(CPPFABRIC_HAS_NCCL) && defined(USE_C10D_NCCL)
#include <c10/cuda/CUDAFunctions.h>

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define CPPFABRIC_NCCL_ENABLED 1
#endif

namespace cppfabric::collectives::detail {

bool nccl_available() {
#ifdef CPPFABRIC_NCCL_ENABLED
  return true;
#else
  return false;
#endif
}

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout) {
#ifdef CPPFABRIC_NCCL_ENABLED
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
  // The strategy has made this rank's GPU current. Bound, it is the device of operations that
  // name none (barrier), instead of NCCL's guess `rank % device count`, which is wrong for
  // devices=[2, 3] and would start a communicator (and a CUDA context) on another GPU.
  backend->setBoundDeviceId(at::Device(at::kCUDA, c10::cuda::current_device()));
  return backend;
#else
  (void)store;
  (void)rank;
  (void)world_size;
  (void)timeout;
  throw std::runtime_error(
      "process group backend 'nccl' is unavailable: this cppfabric was built without CUDA/NCCL "
      "(a CPU-only LibTorch, or nccl.h not found). Use backend 'gloo' or rebuild against a CUDA "
      "LibTorch.");
#endif
}

}  // namespace cppfabric::collectives::detail
