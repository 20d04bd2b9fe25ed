// The DDP gradient reducer: averages gradients across ranks during backward.
//
// Parameters are packed, in reverse registration order (roughly the order autograd produces their
// gradients), into flat buckets of one dtype and device: the first bucket holds up to
// `first_bucket_cap_bytes`, the others up to `bucket_cap_bytes`. A post-hook on each parameter's
// gradient accumulator copies the accumulated gradient into its bucket; once a bucket is full it
// is divided by the world size and all-reduced asynchronously, in bucket order on every rank, while
// backward goes on. A callback queued on the autograd engine waits for every bucket at the end of
// backward and copies the averages back into `.grad`. Private to the library.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cppfabric/collectives/process_group.hpp"

namespace cppfabric::detail {

struct ReducerOptions {
  int64_t bucket_cap_bytes = 25 * 1024 * 1024;
  int64_t first_bucket_cap_bytes = 1024 * 1024;
  bool find_unused_parameters = false;
};

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
  /// The parameter indices of each bucket, in launch order (for tests and diagnostics).
  std::vector<std::vector<int64_t>> bucket_indices() const;

  struct State;  // shared with the autograd hooks

 private:
  std::shared_ptr<State> state_;
};

}  // namespace cppfabric::detail
