// The DDP gradient reducer: averages gradients across ranks during backward.
//
// Parameters are packed, in reverse registration order (roughly the order autograd produces their
// gradients), into flat buckets of one dtype and device: the first bucket holds up to
// `first_bucket_cap_bytes`, the others up to `bucket_cap_bytes`. A post-hook on each parameter's
// gradient accumulator copies the accumulated gradient into its bucket; once a bucket is full it
// is divided by the world size and all-reduced asynchronously, in bucket order on every rank, while
// backward goes on. A callback queued on the autograd engine waits for every bucket at the end of
// backward and copies the averages back into `.grad`. With gradient_as_bucket_view, `.grad` of
// each contiguous parameter becomes a view of its stretch of the bucket the first time it is
// reduced: autograd then accumulates into the bucket (no copy in while `.grad` is kept, e.g.
// zero_grad(set_to_none=false) or accumulation) and the average lands in `.grad` (no copy out).
// At world size 1 the buckets are filled but no collective runs. A backward that throws midway leaves its
// state behind; the next forward or backward discards it (see State::recover_if_interrupted).
// Private to the library.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/collectives/process_group.hpp"
#include "cppfabric/detail/fwd.hpp"

namespace cppfabric::detail {

struct ReducerOptions {
  int64_t bucket_cap_bytes = 25 * 1024 * 1024;
  int64_t first_bucket_cap_bytes = 1024 * 1024;
  bool find_unused_parameters = false;
  bool gradient_as_bucket_view = true;
};

/// Broadcasts `tensors` from `src` in place, packed into one flat buffer per dtype and device.
/// `via` (FSDP's CPU offload over NCCL): tensors on another device are copied there for the
/// collective, in flat buffers of at most kStagingBytes (or one tensor), and copied back.
void broadcast_coalesced(collectives::ProcessGroup& group, const std::vector<at::Tensor>& tensors,
                         int src, std::optional<c10::Device> via = std::nullopt);
/// The device of a strategy's own small collectives (shapes, flags, norms): the root device when
/// it is a GPU (NCCL), the CPU otherwise (Gloo).
inline c10::Device collective_device(const c10::Device& root) {
  return root.is_cuda() ? root : c10::Device(c10::kCPU);
}
/// The module's parameters, then its buffers.
std::vector<at::Tensor> module_states(torch::nn::Module& module);

class Reducer {
 public:
  /// `params` are the module's trainable parameters in registration order, `names` their names.
  Reducer(std::vector<at::Tensor> params, std::vector<std::string> names,
          std::shared_ptr<collectives::ProcessGroup> group, ReducerOptions options);
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  /// False while gradients accumulate locally (no_backward_sync); the next synchronised backward
  /// reduces the accumulated gradients.
  void set_require_sync(bool require);
  bool require_sync() const;
  /// Called before each forward of the wrapped module: if the previous backward pass threw midway,
  /// waits for the all-reduces it had started and discards its partial state (with a warning).
  /// The first gradient hook of the next backward does the same, for backward passes that follow
  /// no forward through Fabric.
  void prepare_for_forward();
  /// The parameter indices of each bucket, in launch order (for tests and diagnostics).
  std::vector<std::vector<int64_t>> bucket_indices() const;

  struct State;  // shared with the autograd hooks

 private:
  std::shared_ptr<State> state_;
};

}  // namespace cppfabric::detail
