// The NCCL backend, kept in its own translation unit: ProcessGroupNCCL.hpp needs nccl.h and the
// CUDA headers, which a CPU-only build of cppfabric does not have. Private.
#pragma once

#include <chrono>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace cppfabric::collectives::detail {

/// True when this build of cppfabric can create NCCL process groups.
bool nccl_available();
/// A ProcessGroupNCCL on the current CUDA device. Throws std::runtime_error when cppfabric was
/// built without NCCL.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout);

}  // namespace cppfabric::collectives::detail
